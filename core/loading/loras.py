"""Style LoRAs (FLUX LoRAs such as Ghibli or Makoto Shinkai styles) through diffusers' LoRA loader.

Each LoRA is loaded once under its own adapter name and switched with ``set_adapters``; the LoRAs a generation
used go into its metadata (``GenerationRecord.loras``) and come back with Recall. ``unload_lora_weights`` removes
the LoRA layers, which leaves the base weights exactly as they were (LoRAs are never fused here).
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import UserError
from core.limits import MAX_LORA_WEIGHT, MAX_LORAS
from core.io.path_policy import UNRESTRICTED, PathPolicy

MAX_WEIGHT = MAX_LORA_WEIGHT


class LoraError(UserError, ValueError):
    """A LoRA that cannot be used; one line naming it."""


@dataclass(frozen=True)
class StyleLora:
    """One style LoRA: ``source`` is a local ``.safetensors`` file, ``owner/repo`` or ``owner/repo/file.safetensors``;
    ``weight`` its strength; ``trigger`` words added to the prompt when it is missing them."""

    source: str
    weight: float = 1.0
    trigger: str = ""

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict) -> "StyleLora":
        return cls(str(data.get("source", "")), float(data.get("weight", 1.0)), str(data.get("trigger") or ""))


def parse_rows(rows, paths: PathPolicy = UNRESTRICTED) -> list[StyleLora]:
    """LoRAs from rows ``(source, weight, trigger)`` (the studio's fields, the CLI's ``--lora``); rows without a
    source are skipped.

    A local file must be allowed by ``paths`` (the studio's folders, ``loras/`` in the user data among them)."""
    loras = []
    for source, weight, trigger in rows:
        source = (source or "").strip()
        if not source:
            continue
        try:
            weight = float(weight if weight is not None else 1.0)
        except (TypeError, ValueError):
            raise LoraError(f"LoRA {source!r}: weight must be a number, got {weight!r}") from None
        if not -MAX_WEIGHT <= weight <= MAX_WEIGHT:
            raise LoraError(f"LoRA {source!r}: weight {weight:g} is outside -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
        _load_arguments(source, paths)  # a missing file or a bad name fails here, before any model loads
        loras.append(StyleLora(source, weight, (trigger or "").strip()))
    if len({lora.source for lora in loras}) != len(loras):
        raise LoraError("the same LoRA is listed twice: give each LoRA once with its combined weight")
    return loras


def with_triggers(prompt: str, loras: list[StyleLora]) -> str:
    """The prompt with each LoRA's trigger words put in front, unless the prompt already contains them."""
    missing = [lora.trigger for lora in loras if lora.trigger and lora.trigger.lower() not in prompt.lower()]
    return ", ".join(missing + [prompt]) if missing else prompt


def _load_arguments(source: str, paths: PathPolicy = UNRESTRICTED) -> tuple[str, dict]:
    """``(path_or_repo, kwargs)`` for ``load_lora_weights``."""
    if len(source) > 500:
        raise LoraError("a LoRA source is a file path or a hub name of at most 500 characters")
    # a local file: a path, a bare file name (in the LoRA folder), or (command line only) anything that exists
    local = (source.startswith((".", "/", "~")) or ("/" not in source and source.endswith(".safetensors"))
             or (not paths.restricted and Path(source).expanduser().exists()))
    if local:
        from core.io.paths import data_dir

        base = data_dir("loras") if paths.restricted else None
        path = paths.resolve(source, base=base, what="LoRA file")
        if not path.is_file():
            raise LoraError(f"LoRA file not found: {source}")
        if path.suffix != ".safetensors":
            raise LoraError(f"LoRA {source}: only .safetensors files are loaded (no pickles)")
        return str(path.parent), {"weight_name": path.name}
    parts = source.split("/")
    if len(parts) == 2:
        return source, {}
    if len(parts) > 2 and parts[-1].endswith(".safetensors"):
        return "/".join(parts[:2]), {"weight_name": "/".join(parts[2:])}
    raise LoraError(f"LoRA {source!r}: give a .safetensors file, owner/repo or owner/repo/file.safetensors")


class LoadedLoras:
    """Which LoRAs are loaded into one pipeline, under which adapter names."""

    def __init__(self):
        self._names: dict[str, str] = {}  # source -> adapter name
        self._counter = 0
        self._lock = threading.Lock()

    @property
    def sources(self) -> list[str]:
        return list(self._names)

    def apply(self, pipe, loras: list[StyleLora]) -> None:
        """Makes exactly ``loras`` active on ``pipe`` with their weights (loading new ones, dropping old ones)."""
        with self._lock:
            if not loras:
                self._unload(pipe)
                return
            if importlib.util.find_spec("peft") is None:
                raise LoraError("style LoRAs need the peft package: pip install peft")
            changed = False
            for source in [s for s in self._names if s not in {lora.source for lora in loras}]:
                pipe.delete_adapters([self._names.pop(source)])
                changed = True
            for lora in loras:
                if lora.source in self._names:
                    continue
                target, kwargs = _load_arguments(lora.source)
                self._counter += 1
                name = f"style{self._counter}"
                try:
                    pipe.load_lora_weights(target, adapter_name=name, **kwargs)
                except Exception as exc:  # noqa: BLE001 - hub, format and shape errors all become one line
                    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise LoraError(f"LoRA {lora.source!r} cannot be loaded: {message}") from None
                self._names[lora.source] = name
                changed = True
            pipe.set_adapters([self._names[lora.source] for lora in loras],
                              adapter_weights=[lora.weight for lora in loras])
            if changed:
                pipe.clear_caches()  # a LoRA may touch the text encoders: cached prompt embeddings are stale

    def unload(self, pipe) -> None:
        with self._lock:
            self._unload(pipe)

    def _unload(self, pipe) -> None:
        if self._names:
            pipe.unload_lora_weights()
            self._names.clear()
            pipe.clear_caches()
