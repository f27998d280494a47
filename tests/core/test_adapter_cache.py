"""The released ``.bin`` is read once; later reads come from the cached safetensors copy, tensor for tensor."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from core.loading import checkpoint
from core.loading.checkpoint import _bin_cache_path, read_adapter

LOAD_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "load_adapter.py"


@pytest.fixture(scope="module")
def load_bench():
    spec = importlib.util.spec_from_file_location("load_adapter_bench", LOAD_BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMALL = dict(inner_dim=128, resampler_dim=64, output_dim=64, attention_width=128)


@pytest.fixture
def small_bin(tmp_path, load_bench):
    state = load_bench.random_adapter_state(seed=1, **SMALL)
    path = tmp_path / "instantcharacter_ip-adapter.bin"
    torch.save(state, path)
    return path, state


def test_second_read_uses_the_cache_and_holds_identical_tensors(small_bin, monkeypatch):
    path, state = small_bin
    first = read_adapter(path)
    assert _bin_cache_path(path).is_file()

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load called: the cached safetensors copy was not used")

    monkeypatch.setattr(torch, "load", no_pickles)
    monkeypatch.setattr(checkpoint.torch, "load", no_pickles)
    second = read_adapter(path)
    assert second.config == first.config
    for group in ("image_proj", "ip_adapter"):
        got = getattr(second, group)
        assert got.keys() == state[group].keys()
        for key, value in state[group].items():
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


def test_a_changed_bin_is_read_again(small_bin, load_bench):
    path, _ = small_bin
    read_adapter(path)
    old_cache = _bin_cache_path(path)
    replacement = load_bench.random_adapter_state(seed=2, **SMALL)
    before = path.stat()
    torch.save(replacement, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # coarse file-system clocks
    assert _bin_cache_path(path) != old_cache  # keyed by size and modification time
    again = read_adapter(path)
    key = next(iter(replacement["image_proj"]))
    assert torch.equal(again.image_proj[key], replacement["image_proj"][key])


def test_load_benchmark_times_each_way(small_bin, load_bench):
    path, _ = small_bin
    r = load_bench.bench_load(path, repeats=1)
    assert {"bin_read_s", "cached_read_s", "bin_read_copy_s", "cached_read_copy_s", "first_read_adapter_s"} <= set(r)
    assert all(v > 0 for v in r.values())
