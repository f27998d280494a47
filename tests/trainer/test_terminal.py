"""The trainer in a terminal: a progress line per logged step, lines for loading and caching, and Ctrl-C that
saves a checkpoint at the end of the step and says how to resume (a second Ctrl-C stops at once)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.events import read_events
from trainer.progress import TerminalProgress, progress_line

from .conftest import tiny_config_text
from .test_training import held_run, wait_for_step

REPO = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"^step (\d+)/(\d+) \[stage 1/1 unpaired-64\] loss \d+\.\d{4} lr \d\.\d\de-\d\d "
                       r"(--|\d+\.\d\d) it/s ETA (--:--|\d\d:\d\d)$")


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def test_a_step_record_reads_as_one_line():
    line = progress_line({"event": "step", "step": 3, "total_steps": 24, "stage": 1, "loss": 0.123456, "lr": 1e-4,
                          "it_s": 2.5, "eta_s": 8.4}, ["unpaired-512", "paired-512"])
    assert line == "step 3/24 [stage 2/2 paired-512] loss 0.1235 lr 1.00e-04 2.50 it/s ETA 00:08"
    assert progress_line({"event": "step", "step": 1, "total_steps": 9, "stage": 0, "loss": 1.0, "lr": 1e-3,
                          "it_s": None, "eta_s": None}).endswith("-- it/s ETA --:--")
    assert progress_line({"event": "step", "step": 1, "total_steps": 9, "stage": 0, "loss": 1.0, "lr": 1e-3,
                          "it_s": 0.01, "eta_s": 3725}).endswith("ETA 1:02:05")
    assert progress_line({"event": "loading", "message": "loading the models (tiny)"}) == "loading the models (tiny)"
    assert progress_line({"event": "unreadable"}) is None


def test_the_second_ctrl_c_stops_at_once():
    from trainer.cli import _first_interrupt_stops

    class Job:
        stepping, stop_asked = True, False

        def ask_stop(self):
            self.stop_asked = True

    job = Job()
    with _first_interrupt_stops(job, talk=False) as guard:
        guard._handle(signal.SIGINT, None)  # the first: stop after this step
        assert job.stop_asked
        with pytest.raises(KeyboardInterrupt):
            guard._handle(signal.SIGINT, None)
    loading = Job()
    loading.stepping = False
    with _first_interrupt_stops(loading, talk=False) as guard, pytest.raises(KeyboardInterrupt):
        guard._handle(signal.SIGINT, None)  # nothing trained yet: nothing to save, stop at once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow  # about 12 s: a tiny run of 3 steps with its model loading
def test_terminal_lines_of_a_tiny_run(trainer_home, unpaired_data, encoder_cache, tmp_path, capsys):
    from trainer.config import load_config
    from trainer.loop import Trainer

    path = tmp_path / "config.toml"
    path.write_text(tiny_config_text(tmp_path / "out", unpaired_data, encoder_cache, steps=3, batch=1))
    Trainer(load_config(path), listeners=[TerminalProgress()]).run()
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 3 and all(STEP_LINE.match(line) for line in steps), steps
    assert [STEP_LINE.match(line).group(1, 2) for line in steps] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert lines[0].startswith("loading the models (tiny, float32 on cpu)")
    assert any(line.startswith("models loaded in ") for line in lines)
    assert any(line.startswith("caching the frozen encoders' latents, text, features for ") for line in lines)
    assert any(line.startswith("cached ") for line in lines)
    assert lines.index("training 3 steps on 1 process(es)") < lines.index(steps[0])


def _losses(out: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(out) if e["event"] == "step"}


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_gives_the_same_losses(trainer_home, unpaired_data, encoder_cache,
                                                                    tmp_path):
    def config(name):
        path = tmp_path / name / "config.toml"
        path.parent.mkdir()
        path.write_text(tiny_config_text(tmp_path / name / "out", unpaired_data, encoder_cache, steps=8, batch=1))
        return path

    straight = subprocess.run([sys.executable, "-m", "trainer", str(config("straight"))], cwd=REPO, env=_env(),
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]

    path = config("interrupted")
    out = path.parent / "out"
    proc = held_run([sys.executable], 3, [str(path)], tmp_path / "interrupted.log")  # waits at step 3 for Ctrl-C
    try:
        wait_for_step(proc, out, 3, tmp_path / "interrupted.log")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout = (tmp_path / "interrupted.log").read_text()
    assert proc.returncode == 130, (tmp_path / "interrupted.log.err").read_text()[-2000:]
    stopped_at = max(_losses(out))
    assert stopped_at == 3, "the run did not stop at the step where Ctrl-C came"
    checkpoints = [e for e in read_events(out) if e["event"] == "checkpoint"]
    assert [(e["step"], e["reason"]) for e in checkpoints] == [(stopped_at, "stop")]
    assert "Ctrl-C: saving a checkpoint at the end of this step (Ctrl-C again to stop at once)" in stdout
    assert f"stopped at step {stopped_at} of 8" in stdout
    assert f"resume with: instantcharacter-studio train {path} --resume" in stdout

    resumed = subprocess.run([sys.executable, "-m", "trainer", str(path), "--resume"], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {stopped_at}" in resumed.stdout
    assert _losses(out) == _losses(tmp_path / "straight" / "out")  # every step's loss, bit for bit
