"""A small least-recently-used cache for per-character and per-prompt work."""

from __future__ import annotations

from collections import OrderedDict


class LRUCache(OrderedDict):
    """Keeps the ``size`` most recently used values; :meth:`get_or_make` computes a missing one once."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value
