"""Which file serves each FLUX part, in a ComfyUI or Forge ``models`` folder and in a models directory's ``flux/``.

ComfyUI keeps FLUX as ``diffusion_models/`` (older installs: ``unet/``) for the transformer, ``vae/``,
``text_encoders/`` (older: ``clip/``) for CLIP-L and T5, ``checkpoints/`` for all-in-one files and ``clip_vision/``
for vision towers; Forge as ``Stable-diffusion/``, ``VAE/`` and ``text_encoder/``. Every ``.safetensors`` /
``.sft`` / ``.gguf`` file there (one folder level down too) is identified by its header alone
(:func:`core.loading.component_files.inspect_file`), so the names people give their files do not matter. Where
several files hold one part, the rule is: a file of that part alone before an all-in-one checkpoint, then the
highest precision (bf16/fp16/fp32 before fp8 before GGUF), then the name; the notes say which was taken and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from core.loading.component_files import OPTION, PART_NAME, PARTS, check_file, inspect_file
from core.loading.single_file import SingleFileError, safetensors_header

# ComfyUI's folder names, then Forge's; each FLUX part is looked for in all of them (headers decide).
FOLDERS = ("diffusion_models", "unet", "checkpoints", "vae", "text_encoders", "clip", "Stable-diffusion", "VAE",
           "text_encoder")
VISION_FOLDER = "clip_vision"
SUFFIXES = (".safetensors", ".sft", ".gguf")
# SigLIP so400m-patch14-384's vision tower: 27x27 patches of 14 px, width 1152.
SIGLIP_POSITIONS = "vision_model.embeddings.position_embedding.weight"
SIGLIP_SHAPE = [729, 1152]
_PRECISION = {"F32": 3, "F16": 3, "BF16": 3, "F8_E4M3": 2, "F8_E5M2": 2}


@dataclass
class FolderChoice:
    """The files found: ``parts`` (FLUX part -> file), ``siglip`` (a so400m-patch14-384 vision tower file or None)
    and one note per part saying which file was taken and, when several fit, why."""

    parts: dict = field(default_factory=dict)
    siglip: str | None = None
    notes: list = field(default_factory=list)


def comfyui_models_folder(spec: str | os.PathLike) -> Path | None:
    """The ComfyUI/Forge ``models`` folder ``spec`` names (the folder itself or the install holding ``models/``),
    or None when it has none of their folder names (a models directory of this studio has ``flux/``)."""
    path = Path(spec).expanduser()
    if not path.is_dir() or (path / "flux").is_dir():
        return None
    for folder in (path, path / "models"):
        if any((folder / name).is_dir() for name in FOLDERS):
            return folder
    return None


def _candidates(folder: Path) -> list[Path]:
    found = []
    for name in FOLDERS:
        sub = folder / name
        if sub.is_dir():
            found += [p for p in sorted(sub.iterdir()) + sorted(q for d in sorted(sub.iterdir()) if d.is_dir()
                                                                for q in d.iterdir())
                      if p.is_file() and p.suffix.lower() in SUFFIXES]
    return list(dict.fromkeys(found))  # a folder linked under two names counts once


def _identify(path: Path) -> tuple[dict, int]:
    """``({part: precision}, parts held)`` of one file; a file that is no FLUX part gives ``({}, 0)``."""
    try:
        info = inspect_file(path)
    except SingleFileError:
        return {}, 0
    return {p: min(_PRECISION.get(d, 1) for d in info.dtypes[p]) for p in info.prefixes}, len(info.prefixes)


def _pick(path_list: list[tuple[Path, int, int]]) -> tuple[Path, str]:
    """The file to take among ``(path, precision, parts held)`` and why."""
    ranked = sorted(path_list, key=lambda c: (c[2] > 1, -c[1], c[0].name))
    best = ranked[0]
    if len(ranked) == 1:
        return best[0], ""
    why = ("a file of this part alone before an all-in-one checkpoint" if best[2] == 1 and ranked[1][2] > 1 else
           "the highest precision" if best[1] > ranked[1][1] else "the first name of equal precision")
    others = ", ".join(c[0].name for c in ranked[1:])
    return best[0], f" ({why}; also fit: {others})"


def _is_siglip_384(path: Path) -> bool:
    try:
        shape = safetensors_header(path).get(SIGLIP_POSITIONS, {}).get("shape")
    except (SingleFileError, OSError, ValueError):
        return False
    return shape == SIGLIP_SHAPE


def choose_files(spec: str | os.PathLike) -> FolderChoice:
    """The file for each FLUX part in a ComfyUI/Forge models folder, with a note each; a part no file holds is
    noted (it then comes from the base)."""
    folder = comfyui_models_folder(spec)
    if folder is None:
        raise SingleFileError(f"{spec} is not a ComfyUI or Forge models folder (none of {', '.join(FOLDERS[:6])})")
    fits: dict[str, list] = {part: [] for part in PARTS}
    for path in _candidates(folder):
        held, count = _identify(path)
        for part, precision in held.items():
            fits[part].append((path, precision, count))
    choice = FolderChoice()
    for part in PARTS:
        if not fits[part]:
            choice.notes.append(f"{PART_NAME[part]}: no file in {folder} (from the base model)")
            continue
        path, why = _pick(fits[part])
        choice.parts[part] = str(path)
        choice.notes.append(f"{PART_NAME[part]}: {path.relative_to(folder)}{why}")
    vision = folder / VISION_FOLDER
    if vision.is_dir():
        towers = [p for p in sorted(vision.iterdir()) if p.suffix.lower() in (".safetensors", ".sft")
                  and p.is_file() and _is_siglip_384(p)]
        if towers:
            choice.siglip = str(towers[0])
            choice.notes.append(f"SigLIP: {towers[0].relative_to(folder)} (so400m-patch14-384)")
    return choice


def find_part_files(flux_folder: str | os.PathLike) -> dict[str, str]:
    """The single files directly inside a models directory's ``flux/``, by the FLUX part each holds (an all-in-one
    file serves every part it holds that no file of its own does). Two files of one part are ambiguous: an error
    naming both."""
    folder = Path(flux_folder)
    if not folder.is_dir():
        return {}
    found: dict[str, list] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES):
        info = inspect_file(path)
        for part in info.prefixes:
            found.setdefault(part, []).append((path, len(info.prefixes)))
    parts = {}
    for part, paths in found.items():
        alone = [p for p, count in paths if count == 1] or [p for p, _ in paths]
        if len(alone) > 1:
            raise SingleFileError(f"{folder} holds several {PART_NAME[part]} files ({', '.join(p.name for p in alone)})"
                                  f": keep one, or choose one with {OPTION[part]} FILE")
        parts[part] = str(alone[0])
    return parts


def check_part_file(path: str, part: str) -> str:
    """``path`` when it holds ``part`` (header checked), else :class:`SingleFileError` in one line."""
    check_file(path, part)
    return path
