"""Sharded training (FSDP2 over gloo on 2 CPU processes): the same weights as one process, shards really split,
and kill -9 + --resume under sharding ends where an uninterrupted sharded run does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from trainer.events import read_events

from .conftest import tiny_config_text
from .test_training import REPO, _env, _run_until_killed, _same_weights, _write_config

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")]


def _config(tmp_path, name, unpaired, cache, distributed="fsdp", **kwargs):
    text = tiny_config_text(tmp_path / name / "out", unpaired, cache, **kwargs)
    text = text.replace('mixed_precision = "no"', f'mixed_precision = "no"\ndistributed = "{distributed}"')
    return _write_config(tmp_path / name, text)


def _run(args, timeout=400, processes=2):
    import subprocess

    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(processes), "-m", "trainer"] + args
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_two_sharded_processes_match_one(trainer_home, unpaired_data, encoder_cache, tmp_path):
    import subprocess

    one = subprocess.run([sys.executable, "-m", "trainer", str(_config(tmp_path, "one", unpaired_data, encoder_cache,
                                                                         steps=4, batch=4, checkpoint_every=2))],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run([str(_config(tmp_path, "two", unpaired_data, encoder_cache, steps=4, batch=4, checkpoint_every=2))])
    assert two.returncode == 0, two.stderr[-3000:]
    out = tmp_path / "two" / "out"
    assert [e for e in read_events(out) if e["event"] == "start"][0]["processes"] == 2
    # each process wrote its own shards (torch.distributed.checkpoint), no whole optimizer.pt
    checkpoint = out / "checkpoints" / "step-00000004"
    shards = sorted(p.name for p in (checkpoint / "sharded").iterdir())
    assert any(n.startswith("__0_") for n in shards) and any(n.startswith("__1_") for n in shards), shards
    assert not (checkpoint / "optimizer.pt").exists() and (checkpoint / "trainable.safetensors").is_file()
    diff = _same_weights(tmp_path / "one" / "out" / "adapter.safetensors", out / "adapter.safetensors")
    print(f"FSDP on 2 processes vs 1 process: max |difference| of the exported weights = {diff:.3g}")
    assert diff < 1e-4
    losses = [[e["loss"] for e in read_events(tmp_path / n / "out") if e["event"] == "step"] for n in ("one", "two")]
    assert max(abs(a - b) for a, b in zip(*losses)) < 1e-4
    assert json.loads((out / "adapter.json").read_text())["image_adapter"]["file"] == "adapter.safetensors"


def test_kill_9_and_resume_under_sharding(trainer_home, unpaired_data, encoder_cache, tmp_path):
    straight = _run([str(_config(tmp_path, "straight", unpaired_data, encoder_cache, steps=12, batch=2,
                                 checkpoint_every=2, keep=2))])
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _config(tmp_path, "killed", unpaired_data, encoder_cache, steps=12, batch=2, checkpoint_every=2, keep=2)
    out = tmp_path / "killed" / "out"
    torchrun = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"]
    _run_until_killed(torchrun, killed, out, 5, tmp_path / "killed.log")  # torchrun and both workers get SIGKILL
    events = read_events(out)
    assert events[-1]["event"] != "done", "the run finished before it could be killed"
    resumed = _run([str(killed), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = [e for e in read_events(out) if e["event"] == "start"][-1]
    assert start["resumed_from"] and start["global_step"] == 4  # the last checkpoint before the kill
    diff = _same_weights(tmp_path / "straight" / "out" / "adapter.safetensors", out / "adapter.safetensors")
    print(f"sharded resume after kill -9 at step {start['global_step']}: max |difference| = {diff}")
    assert diff == 0.0
