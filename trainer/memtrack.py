"""Peak bytes of live torch tensors on the CPU, measured by a ``TorchDispatchMode`` (for checking the planner).

Every tensor an operator returns inside :class:`LiveTensorBytes` (forward, backward and the optimizer's step
included) is tracked by its storage until the storage is freed; tensors that existed before (weights) are
counted from :meth:`LiveTensorBytes.track`. The peak is what a caching allocator's "allocated bytes" counts
(``torch.cuda.max_memory_allocated``), without its rounding and fragmentation.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """``meta``: also count meta tensors (their storages have sizes but no memory), as ``trainer.plan`` does."""

    def __init__(self, meta: bool = False):
        super().__init__()
        self.meta = meta
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._total = 0  # bytes added since the last pruning, freed ones included: an upper bound of live
        self.peak = 0

    def _add(self, t) -> None:
        if isinstance(t, torch.Tensor) and (self.meta or t.device.type != "meta"):
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self._live:
                self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                self._total += storage.nbytes()

    @property
    def live(self) -> int:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            del self._live[key]
        self._total = sum(n for _, n in self._live.values())
        return self._total

    def track(self, tensors) -> "LiveTensorBytes":
        """Counts tensors that already exist (module parameters and buffers, inputs)."""
        for t in tensors:
            self._add(t)
        self.peak = max(self.peak, self.live)
        return self

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._add(t)
        if self._total > self.peak:  # the live bytes can only be a new peak when the upper bound is
            self.peak = max(self.peak, self.live)
        return out
