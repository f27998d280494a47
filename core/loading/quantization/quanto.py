"""optimum-quanto: int8 / float8 weights with a scale per output row, quantized and frozen after loading; runs on
the CPU, MPS and CUDA."""

from __future__ import annotations

from dataclasses import dataclass

from core.loading.model_sizes import kept_module_names
from core.loading.quantization.base import QuantizationBackend, register


@dataclass(frozen=True)
class QuantoBackend(QuantizationBackend):
    """``quanto-int8`` (``qtype="qint8"``) or ``quanto-fp8`` (``qfloat8``)."""

    qtype: str = "qint8"
    library: str = "optimum-quanto"

    def linear_bytes(self, params: int, rows: int, dtype_bytes: int) -> float:
        return params + rows * dtype_bytes  # one byte per weight, one compute-dtype scale per row

    def apply(self, module, exclude=(), include: list[str] | None = None) -> None:
        """Quantize ``module``'s Linear weights in place, frozen; ``include`` (module names) limits it to those
        subtrees. The modules the class keeps unconverted in transformers (``_keep_in_fp32_modules``, T5's ``wo``)
        are excluded, as the transformers quantizers do."""
        from optimum import quanto

        excluded = [f"{n}.*" for n in exclude] + [p for k in kept_module_names(module) for p in (k, f"*.{k}")]
        quanto.quantize(module, weights=getattr(quanto, self.qtype),
                        include=[f"{n}.*" for n in include] if include is not None else None,
                        exclude=excluded or None)
        quanto.freeze(module)

    def apply_to_adapter(self, transformer, processors, components) -> list[str]:
        steps = []
        if transformer is not None and processors:
            self.apply(transformer, include=processors)
            steps.append(f"adapter processors quantized to {self.name}")
        for name, module in components:
            self.apply(module)
            steps.append(f"{name} quantized to {self.name}")
        return steps


INT8 = register(QuantoBackend("quanto-int8", qtype="qint8"))
FP8 = register(QuantoBackend("quanto-fp8", qtype="qfloat8"))
