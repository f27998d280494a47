"""Quantization backends, one file each (as diffusers' ``quantizers/<backend>/``), looked up by name.

``bitsandbytes.py`` (``bnb-nf4``, ``bnb-int8``), ``quanto.py`` (``quanto-int8``, ``quanto-fp8``) and
``fp8_layerwise.py`` (``fp8-layerwise``). Each gives its bytes per weight, its ``from_pretrained`` config or how
it is applied after loading, and whether group offloading can move it (:class:`QuantizationBackend`). The memory
presets and planner (:mod:`core.loading.memory`), applying them (:mod:`core.loading.presets`), the trainer and its
config all ask :func:`quantization_backend`. A new backend is one file here and its import below.

GGUF files are not a backend here: a ``.gguf`` transformer is chosen by its file (:mod:`core.loading.single_file`)
and kept as loaded, whatever the preset.
"""

from core.loading.quantization.base import (QuantizationBackend, UnknownQuantizationError, backends,
                                            quantization_backend, register)
from core.loading.quantization import bitsandbytes, quanto, fp8_layerwise  # noqa: F401,E402 - registers them

# every name, in registration order
QUANTIZATIONS = tuple(b.name for b in backends())


def pipeline_quantization_config(quantizations: dict, compute_dtype):
    """A diffusers ``PipelineQuantizationConfig`` for ``{component: quantization name or None}``, mapping the
    components whose backend quantizes while loading; None when none does."""
    mapping = {}
    for component, name in quantizations.items():
        if name is not None and quantization_backend(name).at_load:
            mapping[component] = quantization_backend(name).load_config(component, compute_dtype)
    if not mapping:
        return None
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping=mapping)


def loaded_quantization(module) -> str | None:
    """The method ``module`` was loaded quantized with (``gguf``, ``bitsandbytes``...), None when it was not."""
    config = getattr(getattr(module, "hf_quantizer", None), "quantization_config", None)
    if config is None:
        return None
    method = getattr(config, "quant_method", "quantized")
    return str(getattr(method, "value", method))


__all__ = ["QUANTIZATIONS", "QuantizationBackend", "UnknownQuantizationError", "backends", "loaded_quantization",
           "pipeline_quantization_config", "quantization_backend", "register"]
