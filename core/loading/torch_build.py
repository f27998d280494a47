"""Whether the installed torch may see a GPU, read without importing torch (which takes seconds).

A leaf: the memory planner (``detect_memory``) and the bitsandbytes backend (whether it can run) both ask it, so the
``plan`` command stays free of torch on a CPU-only build.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def torch_may_see_a_gpu() -> bool:
    """False when the installed torch is built for neither CUDA nor ROCm, read from its generated ``version.py``
    without importing torch (seconds): such a build never sees a GPU. True when torch is imported already, or when
    its build cannot be read (then torch itself is asked)."""
    if "torch" in sys.modules:
        return True
    try:
        folder = importlib.util.find_spec("torch").submodule_search_locations[0]
        spec = importlib.util.spec_from_file_location("_torch_build", Path(folder) / "version.py")
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)
    except Exception:  # an unusual install: let the import of torch say what it is
        return True
    return bool(getattr(build, "cuda", None) or getattr(build, "hip", None))
