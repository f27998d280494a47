"""Where the models come from: hub ids or local paths, resolved to local folders and files.

Downloads go through ``huggingface_hub`` (its cache, its progress bars, ``HF_TOKEN`` / ``hf auth login``).
Every failure becomes a :class:`ModelSourceError` whose one-line message says what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from core.errors import UserError

DEFAULT_BASE = "black-forest-labs/FLUX.1-dev"
DEFAULT_SIGLIP = "google/siglip-so400m-patch14-384"
DEFAULT_DINOV2 = "facebook/dinov2-giant"
DEFAULT_ADAPTER = "tencent/InstantCharacter/instantcharacter_ip-adapter.bin"
# loaded on the first request with a control image, when no other ControlNet is given
DEFAULT_CONTROLNET = "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro-2.0"
ADAPTER_SUFFIXES = (".bin", ".safetensors")

# the diffusers-layout files of a FLUX repo; skips the single-file checkpoints at the repo root (another 30 GB)
BASE_PATTERNS = ["model_index.json", "*/*.json", "*/*.safetensors", "*/*.model", "*/*.txt"]


class ModelSourceError(UserError, RuntimeError):
    """A model that cannot be found or fetched; the message says what to do."""


@dataclass(frozen=True)
class ModelSources:
    """The model sources; each is a hub id (adapter: ``owner/repo/filename``) or a local path.

    ``transformer``, when set, is a single file (BFL-format ``.safetensors``, bf16 or fp8, or ``.gguf``) that
    replaces the base's transformer; the base still supplies FLUX's VAE, text encoders, tokenizers and scheduler
    (see :mod:`core.loading.single_file`).

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

    @classmethod
    def from_models_dir(cls, folder: str | os.PathLike) -> "ModelSources":
        """A folder laid out as ``flux/``, ``siglip/``, ``dinov2/`` and one adapter file (``.bin``/``.safetensors``).

        A ``.gguf`` or BFL ``.safetensors`` file directly inside ``flux/`` (``flux/flux1-dev-Q4_K_S.gguf``) is the
        transformer; ``flux/`` then needs no ``transformer/`` weights (a ``transformer/config.json`` alone sets
        the file's shape; without one, FLUX.1-dev's bundled config is used).
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
        from core.loading.single_file import find_transformer_file

        controlnet = folder / "controlnet"
        return cls(str(folder / "flux"), str(folder / "siglip"), str(folder / "dinov2"), str(adapter),
                   find_transformer_file(folder / "flux"),
                   controlnet=str(controlnet) if (controlnet / "config.json").is_file() else None)

    @classmethod
    def parse(cls, spec: str | None) -> "ModelSources":
        """``default``, ``tiny`` (random-weight models for trying the app), or a models directory."""
        if spec in (None, "", "default"):
            return cls()
        if spec == "tiny":
            from core.loading.tiny import ensure_tiny_bundle

            return cls.from_models_dir(ensure_tiny_bundle())
        return cls.from_models_dir(spec)

    def with_base(self, base: str | os.PathLike | None) -> "ModelSources":
        """``--base``: a single transformer file replaces the transformer only; a folder or hub id the base."""
        if not base:
            return self
        from core.loading.single_file import is_transformer_file

        base = str(Path(base).expanduser()) if is_local(base) else str(base)
        if is_transformer_file(base):
            if not Path(base).is_file():
                raise ModelSourceError(f"transformer file not found: {base}")
            return replace(self, transformer=base)
        return replace(self, base=base, transformer=None)

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
