"""What a trainer user meets when something is off (issue 23, point 6): each a one-line message, fast, with the
exit status the CLI promises (2 for known failures); and exports a user can share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer.cli import main

from .conftest import make_unpaired, tiny_config_text

REPO = Path(__file__).resolve().parents[2]


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _config(tmp_path, text_change=None, **kwargs) -> Path:
    unpaired = make_unpaired(tmp_path / "u", 2) if not (tmp_path / "u").exists() else tmp_path / "u"
    text = tiny_config_text(tmp_path / "out", unpaired, tmp_path / "cache", **kwargs)
    if text_change:
        text = text_change(text)
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_a_misspelt_stage_data_is_one_line(tmp_path, capsys):
    path = _config(tmp_path, lambda t: t.replace('data = "unpaired"', 'data = "pared"'))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages[0].data: 'pared': use one of unpaired, paired, both" in err
    assert "Traceback" not in err and "AttributeError" not in err


def test_validate_reads_a_training_config_as_the_datasets_it_names(tmp_path, capsys):
    path = _config(tmp_path)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"{tmp_path / 'u'}: 2 good row(s), 0 problem(s)"
    (tmp_path / "u" / "char1.txt").unlink()
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr().out
    assert "char1.png: missing caption" in out and "not valid JSON" not in out


def test_a_config_typo_is_reported_before_torch_loads(tmp_path):
    path = _config(tmp_path, lambda t: t.replace("seed = 0", "sed = 0"))
    code = ("import sys; from trainer.cli import main; status = main([sys.argv[1]]); "
            "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded'); sys.exit(status)")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 2 and "sed: unknown key" in done.stderr
    assert done.stdout.strip() == "torch not loaded", (done.stdout, seconds)


def test_plan_of_a_tiny_job_names_no_card_and_prints_no_library_note(tmp_path, capsys):
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("diffusers.models.modeling_utils")  # where diffusers writes the float32 note
    logger.addHandler(handler)
    try:
        assert main(["plan", str(_config(tmp_path))]) == 0
    finally:
        logger.removeHandler(handler)
    out = capsys.readouterr()
    assert not [m for m in seen if "should be kept in float32" in m]
    assert "should be kept in float32" not in out.out + out.err
    row = next(line for line in out.out.splitlines() if line.startswith("unpaired-64"))
    assert row.endswith("any GPU with 0.8 GiB") and "24 GB" not in row


@pytest.mark.slow  # loads the tiny pipeline (about 5 s; more on a busy machine)
def test_a_lora_export_keeps_the_untouched_weights_bit_for_bit(trainer_home, tmp_path):
    from core.loading.checkpoint import read_adapter
    from core.loading.sources import ModelSources, resolve_file
    from core.models.pipeline import InstantCharacterPipeline
    from trainer.checkpoints import export_adapter
    from trainer.config import ObjectiveConfig
    from trainer.objective import build_training_model

    source = resolve_file(ModelSources.parse("tiny").adapter)
    original = read_adapter(source)
    # bf16 weights, as a run on a GPU holds them: the frozen projector would export rounded without the source
    pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse("tiny"), dtype=torch.bfloat16, progress=False)
    model = build_training_model(pipe, ["image_adapter_lora"], ObjectiveConfig(), fresh=False, seed=0,
                                 part_options={"image_adapter_lora": {"rank": 4}})
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained update (peft starts B at zero)
            p.data.normal_(0, 0.01)
    written = export_adapter(tmp_path / "adapter", model, {}, source_adapter=source)
    exported = load_file(str(written[0]))
    assert any(k.startswith("image_proj.") for k in exported)
    for key, value in original.image_proj.items():
        assert torch.equal(exported[f"image_proj.{key}"], value.float()), key
    changed = [k for k, v in original.ip_adapter.items() if not torch.equal(exported[f"ip_adapter.{k}"], v.float())]
    assert changed and all(k.endswith(("to_k_ip.weight", "to_v_ip.weight")) for k in changed)
    untouched = [k for k in original.ip_adapter if k not in changed]
    assert untouched  # norms and biases: bit for bit
    # an export is shared like any file: the mode an ordinary write gives (not mkstemp's 0600)
    mask = os.umask(0o022)
    os.umask(mask)
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
