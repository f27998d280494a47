"""The quantization registry (core/loading/quantization/): one backend per name, looked up by the planner, the
presets, the loader, the trainer and its config, so a name means the same everywhere."""

import pytest
import torch

from core.errors import UserError
from core.loading import memory
from core.loading.quantization import (QUANTIZATIONS, UnknownQuantizationError, backends, quantization_backend)


def test_the_registry_lists_every_backend_once():
    assert QUANTIZATIONS == ("bnb-nf4", "bnb-int8", "quanto-int8", "quanto-fp8", "fp8-layerwise")
    assert [b.name for b in backends()] == list(QUANTIZATIONS)
    by_file = {b.name: type(b).__module__.rsplit(".", 1)[1] for b in backends()}
    assert by_file == {"bnb-nf4": "bitsandbytes", "bnb-int8": "bitsandbytes", "quanto-int8": "quanto",
                       "quanto-fp8": "quanto", "fp8-layerwise": "fp8_layerwise"}
    # group offloading moves plain tensors only: fp8 casting's, not the quantizers' tensor subclasses
    assert [b.name for b in backends() if b.group_offloadable] == ["fp8-layerwise"]
    assert [b.name for b in backends() if b.at_load] == ["bnb-nf4", "bnb-int8"]


def test_an_unknown_name_is_one_user_error_naming_the_choices():
    with pytest.raises(UnknownQuantizationError) as info:
        quantization_backend("int4")
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert str(info.value) == ("quantization 'int4' unknown; expected one of bnb-nf4, bnb-int8, quanto-int8, "
                               "quanto-fp8, fp8-layerwise")
    with pytest.raises(UnknownQuantizationError, match="quantization 'int4' unknown"):  # the preset asks the same
        memory.MemoryPreset("x", "x", transformer_quantization="int4")


def test_planner_presets_and_trainer_config_use_the_registry_names():
    import argparse

    from app.bench_commands import add_bench_arguments
    from trainer.config import BASE_QUANTIZATIONS, config_from_dict

    for preset in memory.MEMORY_PRESETS.values():
        for q in (preset.transformer_quantization, preset.text_encoder_quantization, preset.adapter_quantization):
            assert q is None or q in QUANTIZATIONS
    assert memory.QUANTIZERS == tuple(b.name for b in backends() if not b.group_offloadable)
    assert memory.QUANTO_ALTERNATIVE in QUANTIZATIONS and not quantization_backend(memory.QUANTO_ALTERNATIVE).needs_cuda
    assert BASE_QUANTIZATIONS == ("",) + tuple(b.name for b in backends() if b.trains_frozen_base)
    assert set(BASE_QUANTIZATIONS[1:]) == {"bnb-nf4", "bnb-int8", "quanto-int8", "quanto-fp8"}
    problems = config_from_dict({"trainable": ["image_adapter"], "data": {"unpaired": "x"}, "stages": [{"steps": 1}],
                                 "models": {"base_quantization": "fp8-layerwise"}}).problems()
    assert any(p.startswith("models.base_quantization: 'fp8-layerwise': use one of ''") for p in problems)
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    assert next(a for a in parser._actions if a.dest == "quantization").choices == QUANTIZATIONS


def test_bytes_per_weight():
    size = memory.all_sizes()["transformer"]
    b = 2
    q, rows = size.quantizable_params, size.quantizable_rows
    assert quantization_backend("bnb-nf4").linear_bytes(64, 1, b) == 32 + 4  # 4 bits + a float32 absmax per 64
    assert quantization_backend("bnb-int8").linear_bytes(q, rows, b) == q + 4 * rows  # + a float32 row statistic
    assert quantization_backend("quanto-fp8").linear_bytes(q, rows, b) == q + b * rows  # + a scale per row
    # fp8 casting: one byte per cast weight, the skipped ones (norm-named modulation) in the compute dtype
    skipped = size.cast_skipped_params
    assert memory.weight_bytes(size, "fp8-layerwise") == q - skipped + (size.other_params + skipped) * b


def test_bitsandbytes_says_why_it_cannot_run_on_the_cpu():
    why = quantization_backend("bnb-nf4").unavailable("cpu")
    assert why in ("bitsandbytes is not installed", "bitsandbytes needs a CUDA GPU and the device is cpu")
    assert quantization_backend("quanto-int8").unavailable("cpu") is None
    with pytest.raises(ValueError, match="bnb-int8 quantizes while loading"):
        quantization_backend("bnb-int8").apply(torch.nn.Linear(2, 2))



def test_one_rule_says_whether_bitsandbytes_runs_and_the_presets_follow_it(monkeypatch):
    """The bitsandbytes backend alone decides (package, CUDA device, a torch that sees it); the preset resolver asks
    it rather than checking again."""
    import importlib.util

    from core.loading.presets import resolve_preset
    from core.loading.quantization import bitsandbytes

    nf4 = quantization_backend("bnb-nf4")
    if importlib.util.find_spec("bitsandbytes") is not None:
        monkeypatch.setattr(bitsandbytes, "torch_may_see_a_gpu", lambda: False)
        assert nf4.unavailable("cuda") == "bitsandbytes needs a CUDA GPU and this torch is built without CUDA"
        monkeypatch.setattr(bitsandbytes, "torch_may_see_a_gpu", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert nf4.unavailable("cuda") == "bitsandbytes needs a CUDA GPU and none is available"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert nf4.unavailable("cuda") is None
        assert nf4.unavailable("cpu") == "bitsandbytes needs a CUDA GPU and the device is cpu"
    for why in ("bitsandbytes needs a CUDA GPU and none is available", None):
        monkeypatch.setattr(bitsandbytes.BitsAndBytesBackend, "unavailable", lambda self, device_type, why=why: why)
        preset, reason = resolve_preset("low", device="cuda")
        assert (preset.transformer_quantization, reason) == (
            ("quanto-int8", "bitsandbytes needs a CUDA GPU: using quanto int8") if why else
            ("bnb-nf4", "chosen by the user"))

class _TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.base = torch.nn.Linear(32, 32)
        self.kept = torch.nn.Sequential(torch.nn.Linear(32, 32))


@pytest.mark.parametrize("name", ["quanto-int8", "quanto-fp8", "fp8-layerwise"])
def test_applied_after_loading_on_the_cpu_leaving_the_excluded_modules(name):
    torch.manual_seed(0)
    module = _TwoLayers()
    x = torch.randn(3, 32)
    before = module.base(x)
    kept_weight = module.kept[0].weight.detach().clone()
    backend = quantization_backend(name)
    backend.apply(module, exclude=["kept"])
    assert type(module.kept[0]) is torch.nn.Linear and torch.equal(module.kept[0].weight, kept_weight)
    if name == "fp8-layerwise":
        assert module.base.weight.dtype == torch.float8_e4m3fn
    else:
        assert type(module.base).__name__ == "QLinear"
    assert (module.base(x) - before).abs().max() < 0.05  # 8-bit weights of a 32-wide layer
    assert backend.applied("transformer") in ("transformer quantized to " + name,
                                              "transformer stored in fp8 (layerwise casting)")
