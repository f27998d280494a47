"""The Train tab on the machine it runs on: configs it builds can run there (no nf4 or 8-bit Adam without CUDA,
said in the config), and a run that died says so with its exit code and the last lines of its log."""

from __future__ import annotations

import time

import pytest

from app.tabs import train as tab
from trainer.config import config_from_dict, load_config


def test_a_config_built_without_cuda_runs_here_and_says_why(tmp_path):
    text = tab.build_config_text("24gb", "tiny", "run", str(tmp_path / "u"), "", 0.001, 0, cuda=False)
    assert text.startswith(
        "# No CUDA GPU on this machine: FLUX held in quanto-int8 instead of bnb-nf4 (bitsandbytes needs CUDA).\n"
        "# No CUDA GPU on this machine: torch AdamW instead of 8-bit AdamW (bitsandbytes needs CUDA).\n")
    (tmp_path / "c.toml").write_text(text)
    config = load_config(tmp_path / "c.toml")
    assert config.models.base_quantization == "quanto-int8" and not config.optimizer.use_8bit_adam
    assert config.trainable == ["image_adapter_lora"]  # the rest of the preset as it was
    on_gpu = tab.build_config_text("24gb", "tiny", "run", str(tmp_path / "u"), "", 0.001, 0, cuda=True)
    assert not on_gpu.startswith("#") and 'base_quantization = "bnb-nf4"' in on_gpu


def test_a_run_that_died_before_any_event_shows_its_exit_code_and_log(tmp_path):
    (tmp_path / "trainer.log").write_text("loading\nstep 1/3\r\nTraceback (most recent call last):\n"
                                          "error: models.base_quantization = 'bnb-nf4' needs bitsandbytes on a "
                                          "CUDA GPU\n")
    status, plot, gallery = tab.progress(tmp_path, returncode=2)
    assert status.startswith("**exited with code 2**")
    assert status.endswith("error: models.base_quantization = 'bnb-nf4' needs bitsandbytes on a CUDA GPU\n```")
    assert "No events yet" not in status and plot is None and gallery == []
    assert tab.progress(tmp_path, returncode=None)[0] == "No events yet."  # still starting


@pytest.mark.slow  # starts the trainer process (imports torch and diffusers: 10 s or more)
def test_the_tab_reports_a_trainer_that_exits_at_once(trainer_home, tmp_path):
    from .conftest import make_unpaired, tiny_config_text

    runs = tmp_path / "runs"
    text = tiny_config_text(runs / "dead", make_unpaired(tmp_path / "u", 2), tmp_path / "cache")
    text = text.replace('init = "checkpoint"', 'init = "checkpoint"\nbase_quantization = "bnb-nf4"')
    config_path = runs / "dead.toml"
    runs.mkdir()
    config_path.write_text(text)
    processes = tab.TrainingProcesses()
    out, proc = processes.start(config_path)
    proc.wait(timeout=300)
    assert processes.returncode(out) == 2
    status, _, _ = tab.progress(out, processes.returncode(out))
    assert status.startswith("**exited with code 2**"), status
    assert "needs bitsandbytes on a CUDA GPU" in status
