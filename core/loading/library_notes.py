"""Third-party log lines a user cannot act on, filtered here and nowhere else.

Each filter is narrow: the one logger that writes the line and a pattern of that message, so everything else those
libraries log still reaches the user. Each line is filtered because its cause is in another library:

* transformers: ```CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil```
  (and the same for ``SiglipImageProcessor``). Written when code reads ``transformers.<Model>ImageProcessor`` without
  torchvision; diffusers does so when FLUX is imported (``pipelines/flux/pipeline_flux.py``,
  ``loaders/ip_adapter.py``). The PIL processor it falls back to is the one the released models were made with.
* bitsandbytes: ``Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'``. Written
  when bitsandbytes is imported on a CPU with AVX-512 BF16 and no ``kernels`` package; diffusers imports bitsandbytes
  whenever it is installed (``diffusers.quantizers``, reached from every diffusers model class), while the studio
  quantizes with bitsandbytes on CUDA only.
* kernels: ``Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face
  Hub is in offline mode.`` Written by the same bitsandbytes import (it asks ``kernels`` for that CPU kernel) when the
  ``kernels`` package is installed and the hub is offline; only that repository's line is dropped.
* diffusers: ``There are modules in FluxTransformer2DModel that should be kept in float32: []``. Written by
  ``ModelMixin.to`` on every dtype cast (diffusers 0.42 tests its list against None after turning None into ``[]``),
  including the cast ``from_single_file`` makes itself; only the empty list is dropped, a real one still shows.

Entry points call :func:`filter_library_notes` before anything imports those libraries.
"""

from __future__ import annotations

import logging
import re

# (logger name, pattern matched at the start of the formatted message)
UNACTIONABLE_NOTES = (
    ("transformers.utils.import_utils",
     r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`"),
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("kernels._internals.hf_hub", r"Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"),
    ("diffusers.models.modeling_utils", r"There are modules in \w+ that should be kept in float32: \[\]\."),
)


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with ``pattern``."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def filter_library_notes() -> None:
    """Adds the filters of ``UNACTIONABLE_NOTES`` to their loggers (once; importing nothing)."""
    for name, pattern in UNACTIONABLE_NOTES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))
