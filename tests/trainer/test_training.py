"""Training on tiny models: it learns, exports an adapter the engine loads, resumes exactly, and splits over
processes without changing the result."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import load_config
from trainer.events import read_events

from .conftest import tiny_config_text

REPO = Path(__file__).resolve().parents[2]


def _write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(text)
    return path


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def _same_weights(a: Path, b: Path, atol: float = 0.0) -> float:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def test_short_stage1_run_lowers_loss_and_exports_for_the_engine(trainer_home, unpaired_data, encoder_cache,
                                                                 tmp_path):
    from core.conditioning.character import Character
    from core.models.pipeline import InstantCharacterPipeline
    from core.loading.sources import ModelSources
    from trainer.data import load_dataset
    from trainer.loop import train
    from trainer.batch import BatchEncoder, EncodingCache
    from trainer.objective import build_training_model, fixed_loss

    config = load_config(_write_config(tmp_path, tiny_config_text(tmp_path / "out", unpaired_data, encoder_cache,
                                                                  steps=24, batch=2, lr=3e-3)))
    result = train(config)
    assert not result.stopped and result.state.global_step == 24
    steps = [e for e in read_events(config.output_path) if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 25)) and steps[-1]["eta_s"] == 0.0
    adapter = config.output_path / "adapter.safetensors"
    assert adapter.is_file() and (config.output_path / "adapter.json").is_file()

    rows = load_dataset(unpaired_data)
    losses = {}
    for label, path in (("untrained", None), ("trained", str(adapter))):
        pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse("tiny"), adapter=path,
                                                        dtype=torch.float32, progress=False)
        model = build_training_model(pipe, ["image_adapter"], config.objective, fresh=False, seed=0)
        encoder = BatchEncoder(pipe, config.objective, 16, EncodingCache(encoder_cache, ("features",)), 0)
        losses[label] = fixed_loss(model, encoder, rows, 64, repeats=4)
    print(f"fixed-noise flow-matching loss: untrained {losses['untrained']:.4f} -> trained {losses['trained']:.4f}")
    assert losses["trained"] < losses["untrained"] * 0.97

    # the engine generates with the exported adapter
    image = pipe("a circle character", characters=[Character(rows[0].target)], height=32, width=32,
                 num_inference_steps=2, generator=torch.Generator().manual_seed(0), max_sequence_length=16).images[0]
    assert image.size == (32, 32)


def test_stop_and_save_now_requests(trainer_home, unpaired_data, encoder_cache, tmp_path):
    from trainer.events import SAVE_NOW, STOP, request
    from trainer.loop import Trainer

    config = load_config(_write_config(tmp_path, tiny_config_text(tmp_path / "out", unpaired_data, encoder_cache,
                                                                  steps=50, batch=1)))
    request(config.output_path, SAVE_NOW)  # a stale request from before the start is dropped
    trainer = Trainer(config)
    original = trainer._requests

    def requests():
        step = len(trainer.losses)
        if step == 2:
            request(config.output_path, SAVE_NOW)
        if step == 4:
            request(config.output_path, STOP)
        return original()

    trainer._requests = requests
    result = trainer.run()
    assert result.stopped and result.state.global_step == 4 and not result.exported
    events = read_events(config.output_path)
    assert [e["reason"] for e in events if e["event"] == "checkpoint"] == ["save-now", "stop"]
    assert events[-1]["event"] == "stopped"

    # a checkpoint exports to both layouts, which the engine reads as the same weights
    from core.loading.checkpoint import read_adapter
    from trainer.cli import main

    assert main(["export", str(config.output_path), str(tmp_path / "exported"), "--config",
                 str(tmp_path / "config.toml"), "--bin"]) == 0
    st, pt = read_adapter(tmp_path / "exported.safetensors"), read_adapter(tmp_path / "exported.bin", use_cache=False)
    assert all(torch.equal(st.image_proj[k], pt.image_proj[k]) for k in st.image_proj)
    assert all(torch.equal(st.ip_adapter[k], pt.ip_adapter[k]) for k in st.ip_adapter)


def _descendants(pid: int) -> list[int]:
    """Process ids under ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def held_run(launcher: list[str], step: int, args: list[str], log: Path) -> subprocess.Popen:
    """``launcher -m trainer ARGS`` (launcher: python or torchrun) held at ``step`` by tests/trainer/held_run.py;
    its stdout goes to ``log``, its stderr to ``log`` + ``.err`` (two streams in one file may interleave)."""
    with open(log, "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen(launcher + ["-m", "tests.trainer.held_run", str(step)] + args, cwd=REPO, env=_env(),
                                stdout=out, stderr=err)


def _tail(log: Path) -> str:
    return log.read_text()[-1000:] + "\n" + Path(f"{log}.err").read_text()[-2000:]


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, log: Path, timeout: float = 600) -> None:
    """Waits until the run has logged ``step``; fails with the run's output if it ends or takes ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not any(e["event"] == "step" and e["step"] == step for e in read_events(out)):
        assert proc.poll() is None, f"the run ended before step {step}:\n{_tail(log)}"
        assert time.monotonic() < deadline, f"no step {step} after {timeout:.0f} s:\n{_tail(log)}"
        time.sleep(0.05)


def _run_until_killed(launcher: list[str], config_path: Path, out: Path, kill_at_step: int, log: Path) -> None:
    """Runs ``launcher -m trainer CONFIG`` until it has logged ``kill_at_step`` (where it waits), then kill -9s it
    and every process under it."""
    proc = held_run(launcher, kill_at_step, [str(config_path)], log)
    try:
        wait_for_step(proc, out, kill_at_step, log)
    finally:
        for pid in _descendants(proc.pid) + [proc.pid]:  # the workers first: they must not outlive torchrun
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


@pytest.mark.slow
def test_kill_9_and_resume_matches_an_uninterrupted_run(trainer_home, unpaired_data, encoder_cache, tmp_path):
    def config(name):
        return _write_config(tmp_path / name, tiny_config_text(tmp_path / name / "out", unpaired_data, encoder_cache,
                                                               steps=12, batch=2, checkpoint_every=2, keep=2))

    straight = config("straight")
    done = subprocess.run([sys.executable, "-m", "trainer", str(straight)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = config("killed")
    out = tmp_path / "killed" / "out"
    _run_until_killed([sys.executable], killed, out, kill_at_step=7, log=tmp_path / "killed.log")
    events = read_events(out)
    assert events[-1]["event"] != "done", "the run finished before it could be killed"
    assert max(e["step"] for e in events if e["event"] == "step") == 7
    assert len([p for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")]) <= 2  # keep = 2
    # what a kill in the middle of the next checkpoint's save leaves: its staging folder, half written (the run is
    # held between steps, so the test leaves it here instead of hoping to kill at that moment)
    staging = out / "checkpoints" / ".staging-step-00000008"
    staging.mkdir()
    written = (out / "checkpoints" / "step-00000006" / "trainable.safetensors").read_bytes()
    (staging / "trainable.safetensors").write_bytes(written[: len(written) // 2])
    refused = subprocess.run([sys.executable, "-m", "trainer", str(killed)], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run([sys.executable, "-m", "trainer", str(killed), "--resume"], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    start = [e for e in read_events(out) if e["event"] == "start"][-1]
    assert start["resumed_from"] and start["global_step"] == 6  # the last checkpoint before the kill
    diff = _same_weights(tmp_path / "straight" / "out" / "adapter.safetensors", out / "adapter.safetensors")
    print(f"resume: max |difference| of the final weights = {diff}")
    assert diff == 0.0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_match_one(trainer_home, unpaired_data, encoder_cache, tmp_path):
    def config(name, accumulation=1):
        return _write_config(tmp_path / name, tiny_config_text(tmp_path / name / "out", unpaired_data, encoder_cache,
                                                               steps=4, batch=4, accumulation=accumulation))

    one = subprocess.run([sys.executable, "-m", "trainer", str(config("one"))], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "trainer",
                          str(config("two"))], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert two.returncode == 0, two.stderr[-3000:]
    start = [e for e in read_events(tmp_path / "two" / "out") if e["event"] == "start"][0]
    assert start["processes"] == 2
    diff = _same_weights(tmp_path / "one" / "out" / "adapter.safetensors",
                         tmp_path / "two" / "out" / "adapter.safetensors")
    print(f"1 process vs 2 processes: max |difference| of the final weights = {diff:.3g}")
    assert diff < 1e-4
    losses = [[e["loss"] for e in read_events(tmp_path / n / "out") if e["event"] == "step"] for n in ("one", "two")]
    assert max(abs(a - b) for a, b in zip(*losses)) < 1e-4
