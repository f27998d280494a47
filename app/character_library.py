"""Saved characters in the user data folder: one folder per character with ``image.png`` and ``character.json``.

The library is shared by every tab. A name maps to its folder by :meth:`CharacterLibrary.folder_for` (``Mia`` and
``mia!`` share ``mia``); saving into a folder that holds a character replaces it, so who may replace or delete is
decided on the folder's entry (:meth:`CharacterLibrary.stored_at`), which records the login that added it.
Features are not stored: the pipeline caches them by image content while the studio runs.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from core.conditioning.character import Character
from core.io.paths import atomic_path, remove_stale_temporaries, set_aside, write_bytes_atomic

from .errors import StudioInputError

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^a-z0-9_-]+")


@dataclass
class LibraryCharacter:
    """One saved character: its name, default scale, optional description and the path of its image."""

    name: str
    scale: float
    image_path: Path
    description: str | None = None
    added_by: str | None = None  # the login that saved it (None: the owner, or a studio without logins)

    def image(self) -> Image.Image:
        return Image.open(self.image_path).convert("RGB")


DAMAGED = ".damaged"  # inside the library: entries that could not be read, kept for the user, never listed


class CharacterLibrary:
    """The characters saved under ``folder`` (normally ``data_dir() / "library"``).

    Damage is survived: a file where the folder should be, an entry whose ``character.json`` or image cannot be
    read, is moved aside (never deleted) with a note in :attr:`notes` naming it, and the rest loads."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.notes: list[str] = []
        self._lock = threading.Lock()
        if self.folder.exists() and not self.folder.is_dir():
            kept = set_aside(self.folder)
            self._note(f"the library folder {self.folder} was a file: kept aside as {kept}, a new library started")
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder, recursive=True)
        self._checked: dict[Path, tuple[int, int]] = {}  # image -> (mtime_ns, size) when it last decoded fine

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.warning("%s", text)

    def _set_aside(self, entry: Path, why: str) -> None:
        with self._lock:
            try:
                kept = set_aside(entry, self.folder / DAMAGED)
            except OSError as exc:
                self._note(f"library character {entry.name!r} skipped ({why}); it could not be moved aside: "
                           f"{exc.strerror}")
                return
        self._note(f"library character {entry.name!r} skipped ({why}); kept aside as {kept}")

    def _image_ok(self, image_path: Path) -> bool:
        stat = image_path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        if self._checked.get(image_path) == key:
            return True
        with Image.open(image_path) as image:
            image.load()  # decodes every byte: a cut or corrupt PNG fails here, not when a tab shows it
        self._checked[image_path] = key
        return True

    @staticmethod
    def _slug(name: str) -> str:
        return _UNSAFE.sub("-", name.strip().lower()).strip("-") or "character"

    def _entry_dir(self, name: str) -> Path:
        return self.folder / self._slug(name)

    def folder_for(self, name: str) -> Path:
        """The folder ``name`` is stored in (its slug)."""
        return self._entry_dir(str(name or ""))

    def stored_at(self, name: str) -> LibraryCharacter | None:
        """The character stored in the folder ``name`` maps to, whatever its own name is; ``None`` when empty."""
        folder = self.folder_for(name)
        return next((entry for entry in self.entries() if entry.image_path.parent == folder), None)

    def save(self, image, name: str | None, scale: float = 0.9, description: str | None = None,
             added_by: str | None = None) -> LibraryCharacter:
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
            meta = {"name": character.name, "scale": character.scale, "description": character.description,
                    "added_by": added_by}
            write_bytes_atomic(folder / "character.json", json.dumps(meta, indent=1).encode())
        return LibraryCharacter(character.name, character.scale, folder / "image.png", character.description,
                                added_by)

    def entries(self) -> list[LibraryCharacter]:
        """Every saved character, sorted by name; an entry that cannot be read is moved aside with a note."""
        found = []
        for meta_path in sorted(self.folder.glob("*/character.json")):
            entry = meta_path.parent
            image_path = entry / "image.png"
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                character = LibraryCharacter(str(meta["name"]), float(meta.get("scale", 0.9)), image_path,
                                             meta.get("description"), meta.get("added_by"))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self._set_aside(entry, f"character.json cannot be read: {type(exc).__name__}")
                continue
            try:
                self._image_ok(image_path)
            except FileNotFoundError:
                self._set_aside(entry, "image.png is missing")
                continue
            except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated data
                self._set_aside(entry, f"image.png cannot be decoded: {str(exc).splitlines()[0][:80]}")
                continue
            found.append(character)
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
