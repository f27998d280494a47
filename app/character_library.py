"""Saved characters in the user data folder: one folder per character with ``image.png`` and ``character.json``.

The library is shared by every tab. Names are unique without regard to case; saving a name again replaces it.
Features are not stored: the pipeline caches them by image content while the studio runs.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from core.conditioning.character import Character
from core.io.paths import atomic_path, write_bytes_atomic

from .errors import StudioInputError

_UNSAFE = re.compile(r"[^a-z0-9_-]+")


@dataclass
class LibraryCharacter:
    """One saved character: its name, default scale, optional description and the path of its image."""

    name: str
    scale: float
    image_path: Path
    description: str | None = None

    def image(self) -> Image.Image:
        return Image.open(self.image_path).convert("RGB")


class CharacterLibrary:
    """The characters saved under ``folder`` (normally ``data_dir("library")``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @staticmethod
    def _slug(name: str) -> str:
        return _UNSAFE.sub("-", name.strip().lower()).strip("-") or "character"

    def _entry_dir(self, name: str) -> Path:
        return self.folder / self._slug(name)

    def save(self, image, name: str | None, scale: float = 0.9, description: str | None = None) -> LibraryCharacter:
        """Validates and saves a character (image: path, bytes or PIL image); returns the saved entry."""
        if image is None:
            raise StudioInputError("add a character image before saving it to the library")
        if not name or not str(name).strip():
            raise StudioInputError("give the character a name before saving it to the library")
        character = Character(image, name=str(name), scale=float(scale), description=description or None)
        folder = self._entry_dir(character.name)
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / "image.png") as tmp:
                character.image.save(tmp, format="PNG")
            meta = {"name": character.name, "scale": character.scale, "description": character.description}
            write_bytes_atomic(folder / "character.json", json.dumps(meta, indent=1).encode())
        return LibraryCharacter(character.name, character.scale, folder / "image.png", character.description)

    def entries(self) -> list[LibraryCharacter]:
        """Every saved character, sorted by name; unreadable entries are skipped."""
        found = []
        for meta_path in sorted(self.folder.glob("*/character.json")):
            image_path = meta_path.parent / "image.png"
            try:
                meta = json.loads(meta_path.read_text())
                found.append(LibraryCharacter(str(meta["name"]), float(meta.get("scale", 0.9)), image_path,
                                              meta.get("description")))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not image_path.is_file():
                found.pop()
        return sorted(found, key=lambda c: c.name.lower())

    def names(self) -> list[str]:
        return [c.name for c in self.entries()]

    def get(self, name: str) -> LibraryCharacter:
        for entry in self.entries():
            if entry.name.lower() == str(name or "").strip().lower():
                return entry
        raise StudioInputError(f"no character named {name!r} in the library")

    def delete(self, name: str) -> None:
        entry = self.get(name)
        with self._lock:
            shutil.rmtree(entry.image_path.parent, ignore_errors=True)

    def as_dicts(self) -> list[dict]:
        return [asdict(c) | {"image_path": str(c.image_path)} for c in self.entries()]
