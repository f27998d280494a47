"""A fast, quiet start: every ``--help`` and ``plan`` answer in a moment, with no third-party notes on stderr.

Each command runs in a fresh interpreter (``python -m app.cli``), as a user starts it. The time bound is generous
(CI machines vary); on a 2-core development machine each takes about 0.1-0.3 s.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.loading.torch_build import torch_may_see_a_gpu

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 3.0
HEAVY = ("torch", "diffusers", "transformers", "gradio", "bitsandbytes", "optimum", "accelerate", "PIL")
# Third-party notes a user cannot act on (see core.loading.library_notes) and Python warnings
NOISE = ("requires torchvision", "ImageProcessorPil", "kernels-community", "gemm_4bit", "Warning:", "warn(")

COMMANDS = [
    ["--help"],
    ["generate", "--help"],
    ["eval", "--help"],
    ["story", "--help"],
    ["story", "render", "--help"],
    ["story", "check", "--help"],
    ["story", "to-json", "--help"],
    ["plan", "--help"],
    ["plan"],
    ["plan", "--vram", "24", "--ram", "32"],
    ["bench", "--help"],
    ["train", "--help"],
    ["train", "validate", "--help"],
    ["train", "init-config", "--help"],
    ["train", "export", "--help"],
    ["train", "pairs", "--help"],
]


def _run(args: list[str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - started


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_command_answers_quickly_and_quietly(command):
    proc, seconds = _run(["-m", "app.cli", *command])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr
    # plan with nothing given asks torch for the GPU's memory, unless torch is built for the CPU only
    bound = 30.0 if command == ["plan"] and torch_may_see_a_gpu() else SECONDS
    assert seconds < bound, f"{' '.join(command)} took {seconds:.2f} s"


def test_plan_prints_the_table_and_the_choice():
    proc, _ = _run(["-m", "app.cli", "plan", "--vram", "24", "--ram", "32"])
    assert "auto -> fp8:" in proc.stdout and proc.stderr == ""  # issue 12: 8-bit, not nf4, on 24 GB


def test_parsing_the_command_line_imports_nothing_heavy():
    """Building the parser and running ``plan`` import no torch, gradio, diffusers, transformers or PIL."""
    code = ("import contextlib, io, json, sys\n"
            "from app import cli\n"
            "cli.build_parser()\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.main(['plan', '--vram', '24', '--ram', '32'])\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n")
    proc, _ = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_library_notes_are_dropped_and_nothing_else():
    import logging

    from core.loading.library_notes import filter_library_notes

    filter_library_notes()
    filter_library_notes()  # once is enough; twice adds nothing
    processors = logging.getLogger("transformers.utils.import_utils")
    cpu_ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    other = logging.getLogger("core.other")
    assert len(processors.filters) == 1
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    for logger in (processors, cpu_ops, other):  # on the loggers themselves: transformers stops propagation
        logger.addHandler(handler)
    try:
        processors.warning("`SiglipImageProcessor` requires torchvision (not installed); falling back to "
                           "`SiglipImageProcessorPil` for backward compatibility.")
        cpu_ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...",
                        "No module named 'kernels'")
        processors.warning("something else transformers says")
        other.warning("Failed to load CPU gemm_4bit_forward from kernels-community")
    finally:
        for logger in (processors, cpu_ops, other):
            logger.removeHandler(handler)
    assert seen == ["something else transformers says", "Failed to load CPU gemm_4bit_forward from kernels-community"]


@pytest.mark.slow
def test_loading_flux_through_an_entry_point_prints_no_library_notes():
    """The libraries really write those notes when FLUX is imported (diffusers reads the processors and imports
    bitsandbytes); after ``filter_library_notes`` stderr is empty."""
    code = ("from core.loading.library_notes import filter_library_notes\n"
            "filter_library_notes()\n"
            "from diffusers import FluxPipeline\n")
    proc, _ = _run(["-c", code], timeout=600)  # imports diffusers: slow on a busy machine
    assert proc.returncode == 0, proc.stderr
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr


def test_plan_without_sizes_reads_the_torch_build_instead_of_importing_torch():
    """A torch built for neither CUDA nor ROCm never sees a GPU: ``plan`` learns that from ``torch/version.py``."""
    code = ("import contextlib, io, json, sys\n"
            "from app import cli\n"
            "from core.loading.torch_build import torch_may_see_a_gpu\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    cli.main(['plan'])\n"
            "print(json.dumps([torch_may_see_a_gpu(), 'torch' in sys.modules, out.getvalue()]))\n")
    proc, _ = _run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    may_see_a_gpu, imported_torch, plan = json.loads(proc.stdout)
    import torch

    assert may_see_a_gpu == bool(torch.version.cuda or torch.version.hip)
    if may_see_a_gpu:
        pytest.skip("torch is built for a GPU here: plan asks it")
    assert not torch.cuda.is_available() and not imported_torch
    assert "no GPU" in plan and "auto -> " in plan


def _third_party_lines(stderr: str) -> list[str]:
    """stderr's lines less the progress bars (tqdm redraws them with carriage returns): what is left is a note."""
    progress = re.compile(r".*\d+%\|.*\| *\d+/\d+ \[")
    return [line for line in re.split(r"[\r\n]+", stderr) if line.strip() and not progress.match(line)]


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["generate", "--models", "tiny", "--prompt", "a cat", "--width", "64", "--height", "64", "--steps", "2"],
    ["train", "plan", "--preset", "24gb"],
], ids=["generate", "train plan"])
def test_generate_and_train_plan_print_no_third_party_notes(command, tiny_models, tmp_path):
    """The real commands, as a user runs them: stderr holds progress bars and nothing else (issue 22: the processors'
    torchvision notes, bitsandbytes' kernel lookup, diffusers' "should be kept in float32: []")."""
    if command[0] == "generate":
        command = [*command, "--out", str(tmp_path / "cat.png")]
    proc, _ = _run(["-m", "app.cli", *command], timeout=600)  # loads torch and diffusers: slow on a busy machine
    assert proc.returncode == 0, proc.stderr
    assert _third_party_lines(proc.stderr) == [], proc.stderr


def test_progress_bars_are_told_from_notes():
    bars = "Loading weights:   0%|          | 0/21 [00:00<?, ?it/s]\rLoading weights: 100%|##| 21/21 [00:00<00:00]\n"
    assert _third_party_lines(bars) == []
    assert _third_party_lines(bars + "There are modules in X that should be kept in float32: []\n") == [
        "There are modules in X that should be kept in float32: []"]
