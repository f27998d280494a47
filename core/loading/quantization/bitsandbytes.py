"""bitsandbytes: nf4 (4-bit NormalFloat) and LLM.int8, quantized while ``from_pretrained`` loads; CUDA only."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

from core.loading.quantization.base import QuantizationBackend, register
from core.loading.torch_build import torch_may_see_a_gpu

# diffusers/transformers defaults: blocksize 64, no double quantization: two weights per byte plus one float32
# absmax per 64 weights.
NF4_BLOCKSIZE = 64
# LLM.int8 keeps one float32 row statistic (SCB) per output row.
BNB_INT8_ROW_BYTES = 4


@dataclass(frozen=True)
class BitsAndBytesBackend(QuantizationBackend):
    """``bnb-nf4`` (``bits=4``) or ``bnb-int8`` (``bits=8``)."""

    bits: int = 4
    library: str = "bitsandbytes"
    at_load: bool = True
    needs_cuda: bool = True

    def linear_bytes(self, params: int, rows: int, dtype_bytes: int) -> float:
        if self.bits == 4:
            return params / 2 + math.ceil(params / NF4_BLOCKSIZE) * 4
        return params + rows * BNB_INT8_ROW_BYTES

    def unavailable(self, device_type: str) -> str | None:
        """The one rule for whether bitsandbytes runs here: the package installed (only looked for: importing it
        costs seconds and prints notes about its CPU kernels) and a CUDA device (its 4/8-bit kernels need CUDA),
        asked of torch only when its build can see a GPU (so the planner stays free of torch on a CPU build)."""
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed"
        if device_type != "cuda":
            return f"bitsandbytes needs a CUDA GPU and the device is {device_type}"
        if not torch_may_see_a_gpu():
            return "bitsandbytes needs a CUDA GPU and this torch is built without CUDA"
        import torch

        if not torch.cuda.is_available():
            return "bitsandbytes needs a CUDA GPU and none is available"
        return None

    def load_config(self, component: str, compute_dtype):
        if component == "transformer":
            from diffusers import BitsAndBytesConfig
        else:
            from transformers import BitsAndBytesConfig
        if self.bits == 4:
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
        return BitsAndBytesConfig(load_in_8bit=True)

    def loaded_quantized(self, module) -> bool:
        return bool(getattr(module, "is_loaded_in_4bit", False) or getattr(module, "is_loaded_in_8bit", False)
                    or getattr(getattr(module, "hf_quantizer", None), "quantization_config", None) is not None)


NF4 = register(BitsAndBytesBackend("bnb-nf4", bits=4))
INT8 = register(BitsAndBytesBackend("bnb-int8", bits=8))
