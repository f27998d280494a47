"""Style LoRAs (FLUX LoRAs such as Ghibli or Makoto Shinkai styles) through diffusers' LoRA loader.

Each LoRA is loaded once under its own adapter name and switched with ``set_adapters``; the LoRAs a generation
used go into its metadata (``GenerationRecord.loras``) and come back with Recall. ``unload_lora_weights`` removes
the LoRA layers, which leaves the base weights exactly as they were (LoRAs are never fused here).
"""

from __future__ import annotations

import importlib.util
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import UserError
from core.limits import MAX_LORA_DOWNLOAD_BYTES, MAX_LORA_WEIGHT, MAX_LORAS
from core.io.hub_ids import HubId
from core.io.path_policy import UNRESTRICTED, PathPolicy

MAX_WEIGHT = MAX_LORA_WEIGHT
DEFAULT_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' own name for a saved LoRA


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


def parse_rows(rows, paths: PathPolicy = UNRESTRICTED, *, downloads: bool = True) -> list[StyleLora]:
    """LoRAs from rows ``(source, weight, trigger)`` (the studio's fields, the CLI's ``--lora``); rows without a
    source are skipped.

    A local file must be allowed by ``paths`` (the studio's folders, ``loras/`` in the user data among them). A hub
    LoRA is fetched here, before any GPU slot is held: downloaded (at most :data:`MAX_LORA_DOWNLOAD_BYTES`) when
    ``downloads``, else it must already be in the hub cache."""
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
        located = locate(source, paths)  # a missing file or a bad name fails here, before any model loads
        if isinstance(located, HubId):
            hub_lora_file(located, download=downloads)
        loras.append(StyleLora(source, weight, (trigger or "").strip()))
    if len({lora.source for lora in loras}) != len(loras):
        raise LoraError("the same LoRA is listed twice: give each LoRA once with its combined weight")
    return loras


def with_triggers(prompt: str, loras: list[StyleLora]) -> str:
    """The prompt with each LoRA's trigger words put in front, unless the prompt already contains them."""
    missing = [lora.trigger for lora in loras if lora.trigger and lora.trigger.lower() not in prompt.lower()]
    return ", ".join(missing + [prompt]) if missing else prompt


def locate(source: str, paths: PathPolicy = UNRESTRICTED) -> Path | HubId:
    """Where the LoRA ``source`` is: a local ``.safetensors`` file allowed by ``paths``, or a :class:`HubId`.

    A bare file name (``style.safetensors``) is looked up in ``loras/`` of the user data first (the studio's LoRA
    folder), then, on the command line only, in the working folder. Anything else that is not a path
    (``/``, ``.``, ``~`` first) is a hub id, checked as one and never looked up on the disk.
    """
    if len(source) > 500:
        raise LoraError("a LoRA source is a file path or a hub name of at most 500 characters")
    bare = "/" not in source and "\\" not in source and source.endswith(".safetensors")
    local = (source.startswith((".", "/", "~")) or bare
             or (not paths.restricted and Path(source).expanduser().exists()))
    if not local:
        hub = HubId.parse(source, "LoRA")
        if hub.filename is not None and not hub.filename.endswith(".safetensors"):
            raise LoraError(f"LoRA {source!r}: give a .safetensors file, owner/repo or owner/repo/file.safetensors")
        return hub
    from core.io.paths import data_dir

    base = None
    if bare and (paths.restricted or (data_dir("loras") / source).is_file()):
        base = data_dir("loras")
    path = paths.resolve(source, base=base, what="LoRA file")
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {source}")
    if path.suffix != ".safetensors":
        raise LoraError(f"LoRA {source}: only .safetensors files are loaded (no pickles)")
    return path


def hub_lora_file(hub: HubId, *, download: bool, max_bytes: int | None = None) -> Path:
    """The local copy of the hub LoRA ``hub`` (from the hub cache; downloaded first when ``download``).

    ``owner/repo`` takes the repo's only ``.safetensors`` file (or ``pytorch_lora_weights.safetensors``). A file
    larger than ``max_bytes`` (default :data:`MAX_LORA_DOWNLOAD_BYTES`) is refused before it is downloaded.
    """
    from huggingface_hub import try_to_load_from_cache

    max_bytes = MAX_LORA_DOWNLOAD_BYTES if max_bytes is None else max_bytes
    for filename in [hub.filename] if hub.filename else [DEFAULT_LORA_FILE]:
        cached = try_to_load_from_cache(hub.repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    if not download:
        raise LoraError(f"LoRA {str(hub)!r} is not in this studio's hub cache, and downloading LoRAs is for the "
                        "studio's owner only (the owner may allow it with --allow-visitor-downloads)")
    try:
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi()
        filename = hub.filename or _only_safetensors(hub, api)
        info = list(api.get_paths_info(hub.repo, [filename]))
        size = getattr(info[0], "size", None) if info else None
        if size is None:
            raise LoraError(f"LoRA {str(hub)!r}: no file {filename} in the repo")
        if size > max_bytes:
            raise LoraError(f"LoRA {str(hub)!r} is {size / 2**20:,.0f} MB: at most {max_bytes / 2**20:,.0f} MB "
                            "is downloaded")
        return Path(hf_hub_download(hub.repo, filename))
    except LoraError:
        raise
    except Exception as exc:  # noqa: BLE001 - offline, missing, gated: one line, no local paths
        raise LoraError(f"LoRA {str(hub)!r} cannot be downloaded: {redacted(exc)}") from None


def _only_safetensors(hub: HubId, api) -> str:
    files = [f for f in api.list_repo_files(hub.repo) if f.endswith(".safetensors")]
    if DEFAULT_LORA_FILE in files or len(files) != 1:
        if DEFAULT_LORA_FILE in files:
            return DEFAULT_LORA_FILE
        raise LoraError(f"LoRA {str(hub)!r}: the repo has {len(files)} .safetensors files: name one as "
                        "owner/repo/file.safetensors")
    return files[0]


_PATH = re.compile(r"(?<![\w.-])(?:[A-Za-z]:)?[/\\][^\s'\"]*")  # not the "/" inside owner/repo


def redacted(exc: BaseException) -> str:
    """The first line of ``exc`` with every path in it replaced by ``<path>`` (no server folders in messages)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return _PATH.sub("<path>", line)[:300]


def _load_arguments(source: str, downloads: bool = True) -> tuple[str, dict]:
    """``(folder, {"weight_name": file})`` of a local file for ``load_lora_weights``: never a hub id or a folder
    diffusers would resolve on its own."""
    located = locate(source)
    path = hub_lora_file(located, download=downloads) if isinstance(located, HubId) else located
    return str(path.parent), {"weight_name": path.name}


class LoadedLoras:
    """Which LoRAs are loaded into one pipeline, under which adapter names."""

    def __init__(self, downloads: bool = True):
        self.downloads = downloads  # False: hub LoRAs only from the cache (the studio fetches them before the GPU)
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
                target, kwargs = _load_arguments(lora.source, self.downloads)
                self._counter += 1
                name = f"style{self._counter}"
                try:
                    pipe.load_lora_weights(target, adapter_name=name, **kwargs)
                except Exception as exc:  # noqa: BLE001 - hub, format and shape errors all become one line
                    raise LoraError(f"LoRA {lora.source!r} cannot be loaded: {redacted(exc)}") from None
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
