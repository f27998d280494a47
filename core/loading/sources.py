"""Where the models come from: hub ids or local paths, resolved to local folders and files.

Downloads go through ``huggingface_hub`` (its cache, its progress bars, ``HF_TOKEN`` / ``hf auth login``).
Every failure becomes a :class:`ModelSourceError` whose one-line message says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from core.errors import ModelSourceError
from core.loading.comfyui_folder import check_part_file, choose_files, comfyui_models_folder, find_part_files
from core.loading.component_files import check_file
from core.loading.single_file import is_transformer_file

DEFAULT_BASE = "black-forest-labs/FLUX.1-dev"
DEFAULT_SIGLIP = "google/siglip-so400m-patch14-384"
DEFAULT_DINOV2 = "facebook/dinov2-giant"
DEFAULT_ADAPTER = "tencent/InstantCharacter/instantcharacter_ip-adapter.bin"
# loaded on the first request with a control image, when no other ControlNet is given
DEFAULT_CONTROLNET = "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro-2.0"
ADAPTER_SUFFIXES = (".bin", ".safetensors")

# the diffusers-layout files of a FLUX repo; skips the single-file checkpoints at the repo root (another 30 GB)
BASE_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.model", "*/*.txt"]


@dataclass(frozen=True)
class ModelSources:
    """The model sources; each is a hub id (adapter: ``owner/repo/filename``) or a local path.

    ``transformer``, ``vae``, ``clip`` and ``t5``, when set, are single files that replace that FLUX part's weights
    (see :mod:`core.loading.single_file` and :mod:`core.loading.component_files`); an all-in-one checkpoint is
    named for every part it holds. The base still supplies the parts given no file, and the configs, tokenizers
    and scheduler; with every part from a file and the default base, the bundled FLUX.1-dev configs and the
    tokenizers' ungated repositories do, so nothing gated is fetched. ``notes`` say which file was taken for each
    part of a ComfyUI/Forge folder and why.

    ``controlnet``, when set, is the ControlNet for control images (a hub id, a diffusers folder or a
    ``.safetensors`` file); otherwise a models directory's ``controlnet/`` folder, else :data:`DEFAULT_CONTROLNET`,
    loaded on the first request with a control image.
    """

    base: str = DEFAULT_BASE
    siglip: str = DEFAULT_SIGLIP
    dinov2: str = DEFAULT_DINOV2
    adapter: str = DEFAULT_ADAPTER
    transformer: str | None = None
    controlnet: str | None = None
    vae: str | None = None
    clip: str | None = None
    t5: str | None = None
    notes: tuple[str, ...] = ()

    def part_files(self) -> dict[str, str]:
        """The FLUX parts given as files, by pipeline component name (``text_encoder`` is CLIP, ``..._2`` T5)."""
        files = {"transformer": self.transformer, "vae": self.vae, "text_encoder": self.clip,
                 "text_encoder_2": self.t5}
        return {part: path for part, path in files.items() if path}

    @classmethod
    def from_models_dir(cls, folder: str | os.PathLike) -> "ModelSources":
        """A folder laid out as ``flux/``, ``siglip/``, ``dinov2/`` and one adapter file (``.bin``/``.safetensors``).

        Single files directly inside ``flux/`` replace the parts they hold (found by their headers): a ``.gguf``
        or BFL ``.safetensors`` transformer, ``ae.safetensors``, ``clip_l.safetensors``, a ``t5xxl`` file, an
        all-in-one checkpoint; ``flux/`` then needs only the configs and tokenizers of those parts (without a
        ``transformer/config.json``, FLUX.1-dev's bundled one is used).
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelSourceError(f"models directory not found: {folder}")
        missing = [name for name in ("flux", "siglip", "dinov2") if not (folder / name).is_dir()]
        adapters = sorted(p for p in folder.iterdir() if p.suffix in ADAPTER_SUFFIXES and p.is_file())
        if not adapters:
            missing.append("an adapter file (*.bin or *.safetensors)")
        if missing:
            raise ModelSourceError(f"models directory {folder} is missing: {', '.join(missing)}")
        # prefer safetensors when both formats are present
        adapter = next((p for p in adapters if p.suffix == ".safetensors"), adapters[0])
        parts = find_part_files(folder / "flux")
        controlnet = folder / "controlnet"
        return cls(str(folder / "flux"), str(folder / "siglip"), str(folder / "dinov2"), str(adapter),
                   transformer=parts.get("transformer"), vae=parts.get("vae"), clip=parts.get("text_encoder"),
                   t5=parts.get("text_encoder_2"),
                   controlnet=str(controlnet) if (controlnet / "config.json").is_file() else None)

    @classmethod
    def from_comfyui_folder(cls, folder: str | os.PathLike) -> "ModelSources":
        """A ComfyUI or Forge ``models`` folder: each FLUX part from the file its folders hold (see
        :mod:`core.loading.comfyui_folder`), SigLIP from ``clip_vision/`` when there; the rest from the hub."""
        found = choose_files(folder)
        return cls(siglip=found.siglip or DEFAULT_SIGLIP, transformer=found.parts.get("transformer"),
                   vae=found.parts.get("vae"), clip=found.parts.get("text_encoder"),
                   t5=found.parts.get("text_encoder_2"), notes=tuple(found.notes))

    @classmethod
    def parse(cls, spec: str | None) -> "ModelSources":
        """``default``, ``tiny`` (random-weight models for trying the app), a models directory, or a ComfyUI /
        Forge models folder."""
        if spec in (None, "", "default"):
            return cls()
        if spec == "tiny":
            from core.loading.tiny import ensure_tiny_bundle

            return cls.from_models_dir(ensure_tiny_bundle())
        if comfyui_models_folder(spec) is not None:
            return cls.from_comfyui_folder(spec)
        return cls.from_models_dir(spec)

    def with_base(self, base: str | os.PathLike | None) -> "ModelSources":
        """``--base``: a single file replaces the transformer, an all-in-one checkpoint every part it holds (parts
        already given a file keep theirs); a folder or hub id is the base."""
        if not base:
            return self
        base = str(Path(base).expanduser()) if is_local(base) else str(base)
        if is_transformer_file(base):
            if not Path(base).is_file():
                raise ModelSourceError(f"transformer file not found: {base}")
            held = check_file(base, "transformer").prefixes
            files = {"vae": self.vae, "clip": self.clip, "t5": self.t5}
            for field, part in (("vae", "vae"), ("clip", "text_encoder"), ("t5", "text_encoder_2")):
                if part in held and not files[field]:
                    files[field] = base
            return replace(self, transformer=base, **files)
        return replace(self, base=base, transformer=None)

    def with_files(self, vae: str | None = None, clip: str | None = None, t5: str | None = None) -> "ModelSources":
        """``--vae``, ``--clip``, ``--t5``: each file's header is checked to hold that part (one line naming the
        file and what it looks like otherwise) before anything loads."""
        given = {}
        for field, part, path in (("vae", "vae", vae), ("clip", "text_encoder", clip), ("t5", "text_encoder_2", t5)):
            if path:
                given[field] = check_part_file(str(Path(path).expanduser()), part)
        return replace(self, **given)

    def with_adapter(self, adapter: str | os.PathLike | None) -> "ModelSources":
        """``--adapter``: a trained image adapter (a local ``.safetensors`` / ``.bin`` file, or
        ``owner/repo/filename``) instead of the models' own."""
        if not adapter:
            return self
        adapter = str(adapter)
        if is_local(adapter):
            path = Path(adapter).expanduser()
            if not path.is_file():
                raise ModelSourceError(f"adapter file not found: {adapter}")
            if path.suffix not in ADAPTER_SUFFIXES:
                raise ModelSourceError(f"adapter file {adapter}: use a .safetensors or .bin adapter "
                                       "(`train export` writes one)")
            adapter = str(path)
        return replace(self, adapter=adapter)

    def override(self, **kwargs) -> "ModelSources":
        """A copy with the given sources replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


def is_local(spec: str | os.PathLike) -> bool:
    return Path(spec).expanduser().exists() or str(spec).startswith((".", "/", "~"))


def _hub_error(exc: Exception, repo: str) -> ModelSourceError:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return ModelSourceError(
            f"{repo} is gated: accept its licence at https://huggingface.co/{repo}, then log in with "
            "`hf auth login` or set HF_TOKEN"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelSourceError(f"{repo} was not found on the Hugging Face Hub (check the id, or log in if private)")
    if isinstance(exc, LocalEntryNotFoundError):
        return ModelSourceError(
            f"{repo} is not in the local cache and cannot be downloaded (offline or HF_HUB_OFFLINE=1): "
            "connect once, or pass a local folder"
        )
    if isinstance(exc, HfHubHTTPError):
        return ModelSourceError(f"downloading {repo} failed: {str(exc).splitlines()[0]}")
    if isinstance(exc, OSError):
        return ModelSourceError(f"downloading {repo} failed: {exc}")
    return ModelSourceError(f"downloading {repo} failed: {type(exc).__name__}: {exc}")


def resolve_folder(spec: str, what: str, allow_patterns: list[str] | None = None,
                   ignore_patterns: list[str] | None = None) -> str:
    """A local folder for a model given as a folder or a hub id (downloaded into the hub cache, with progress)."""
    path = Path(spec).expanduser()
    if is_local(spec):
        if not path.is_dir():
            raise ModelSourceError(f"{what} folder not found: {spec}")
        return str(path)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
    except Exception as exc:  # noqa: BLE001 - every hub failure gets a message that says what to do
        raise _hub_error(exc, spec) from None


def resolve_file(spec: str, what: str = "adapter") -> str:
    """A local file for ``path`` or ``owner/repo/filename`` (downloaded into the hub cache, with progress)."""
    path = Path(spec).expanduser()
    if is_local(spec):
        if not path.is_file():
            raise ModelSourceError(f"{what} file not found: {spec}")
        return str(path)
    parts = spec.split("/")
    if len(parts) < 3:
        raise ModelSourceError(f"{what} {spec!r}: give a local file or owner/repo/filename")
    from huggingface_hub import hf_hub_download

    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        return hf_hub_download(repo, filename)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(exc, repo) from None
