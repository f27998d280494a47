"""Hugging Face Spaces and ZeroGPU: detection and the ``spaces.GPU`` wrapping of GPU work.

On ZeroGPU a GPU is attached only while a function decorated with ``spaces.GPU`` runs, for at most its
``duration`` seconds; shorter requests get priority in ZeroGPU's queue, so the duration is estimated per request.
Anywhere else the GPU function is returned unchanged and the ``spaces`` package is not needed.
"""

from __future__ import annotations

import os

# Seconds per denoising step of FLUX.1-dev at 1024x1024 on ZeroGPU's H200 slice, with margin; plus fixed costs.
SECONDS_PER_MEGAPIXEL_STEP = 0.6
FIXED_SECONDS = 15
MIN_DURATION, MAX_DURATION = 30, 300


def on_spaces() -> bool:
    """True inside a Hugging Face Space (Spaces sets ``SPACE_ID``)."""
    return bool(os.environ.get("SPACE_ID"))


def on_zero_gpu() -> bool:
    """True on ZeroGPU hardware (Spaces sets ``SPACES_ZERO_GPU``)."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true", "yes")


def estimate_duration(width: int, height: int, steps: int, images: int = 1, true_cfg: bool = False,
                      characters: int = 0) -> int:
    """Seconds of GPU to ask ZeroGPU for one request, clamped to what ZeroGPU grants."""
    per_step = SECONDS_PER_MEGAPIXEL_STEP * (width * height / 2**20) * (2 if true_cfg else 1) * (1 + 0.1 * characters)
    seconds = FIXED_SECONDS + images * steps * per_step
    return int(min(MAX_DURATION, max(MIN_DURATION, round(seconds))))


def gpu_function(fn, duration):
    """``spaces.GPU(duration=duration)(fn)`` on ZeroGPU, else ``fn`` itself.

    ``duration`` is seconds, or a callable taking ``fn``'s arguments and returning seconds.
    """
    if not on_zero_gpu():
        return fn
    import spaces  # only on ZeroGPU, where the Space image provides it

    return spaces.GPU(duration=duration)(fn)
