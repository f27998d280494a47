"""Ctrl-C (SIGINT) on the command line: ``story render`` and ``generate`` stop within a denoising step with exit
code 130, what was written stays intact, and ``story render --resume`` continues from there."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from core.story.manifest import load_manifest, panel_filename
from tests.app.test_story_cli import COMIC, REPO, subprocess_env

pytestmark = pytest.mark.slow  # subprocesses that load the tiny models (about 10 s each on 2 busy CPU cores)

STORY_ARGS = ["--models", "tiny", "--size", "128x96", "--steps", "40", "--dpi", "72"]


class Lines:
    """A subprocess's output lines (stdout and stderr), each with the time it arrived."""

    def __init__(self, command, env):
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter(), line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> tuple[float, re.Match]:
        deadline = time.monotonic() + timeout
        while True:
            # whether the output is over, asked before the lines are read: its last line is read too
            over = self.proc.poll() is not None and not self.reader.is_alive()
            for stamp, line in list(self.lines):
                for piece in line.split("\r"):  # progress bars redraw with carriage returns
                    match = re.search(pattern, piece)
                    if match:
                        return stamp, match
            assert not over, f"the command ended without a line matching {pattern!r}:\n{self.text}"
            assert time.monotonic() < deadline, f"no line matching {pattern!r} in {timeout} s:\n{self.text}"
            time.sleep(0.01)

    def ctrl_c(self) -> float:
        sent = time.perf_counter()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=120)
        self.reader.join(timeout=10)
        return sent


def test_ctrl_c_stops_story_render_within_a_step_and_resume_continues(tiny_models, user_home, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "app.story_commands", "render", str(COMIC), "--out", str(out), *STORY_ARGS]
    run = Lines(command, subprocess_env(user_home))
    _, match = run.wait_for(r"panel 1 done in ([\d.]+) s")
    panel_time = float(match.group(1))
    time.sleep(panel_time * 0.3)  # panel 2 is being drawn
    sent = run.ctrl_c()
    assert run.proc.returncode == 130, run.text
    stopped, _ = run.wait_for(r"^stopped: ")
    print(f"\nstory render: stopped {stopped - sent:.2f} s after Ctrl-C (one panel of 40 steps: {panel_time:.1f} s), "
          f"process gone {time.perf_counter() - sent:.1f} s after it")
    assert stopped - sent < panel_time / 40 * 3 + 1.0  # a step or two (and the panel's record, when it just ended)
    assert "stopping after the current step" in run.text and "run the same command with --resume" in run.text
    done = sorted(load_manifest(out).done())
    assert 1 <= len(done) < 8 and not list(out.rglob("*.tmp"))
    kept = {i: (out / panel_filename(i)).read_bytes() for i in done}

    resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=subprocess_env(user_home), capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"rendered {8 - len(done)} panels, kept {len(done)} already done" in resumed.stdout, resumed.stdout
    assert {i: (out / panel_filename(i)).read_bytes() for i in done} == kept  # what was written stays as it was
    assert sorted(load_manifest(out).done()) == list(range(8))


def test_ctrl_c_stops_generate_within_a_step(tiny_models, user_home, tmp_path):
    target = tmp_path / "out.png"
    command = [sys.executable, "-m", "app.cli", "generate", "--models", "tiny", "--prompt", "a red fox",
               "--steps", "100", "--width", "128", "--height", "128", "--seed", "1", "--out", str(target)]
    run = Lines(command, subprocess_env(user_home))
    run.wait_for(r"\b([5-9]|\d\d+)/100\b")  # denoising has begun
    sent = run.ctrl_c()
    assert run.proc.returncode == 130, run.text
    stopped, _ = run.wait_for(r"stopped: nothing was saved")
    steps = [int(m) for _, line in run.lines for m in re.findall(r"\b(\d+)/100\b", line)]
    print(f"\ngenerate: stopped {stopped - sent:.2f} s after Ctrl-C at step {max(steps)} of 100")
    assert max(steps) < 100 and stopped - sent < 3.0
    assert not target.exists() and not list(tmp_path.glob("*.tmp"))
