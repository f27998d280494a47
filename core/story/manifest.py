"""The render manifest: which panels of a story are rendered, with which settings, into which file.

Layout of a render folder::

    OUT/manifest.json            the story (as JSON) and one record per finished panel
    OUT/manifest.part-RANK.json  records of one process of a multi-process render, merged into manifest.json
    OUT/panels/panel-001.png     panel images, 1-based numbers
    OUT/panels/source-*.png      the sources of panel edits (``edits`` in the manifest, see core.story.edit)

Every file is written to a temporary name in the same folder and moved into place with `os.replace`, so a
reader (or a resumed render after `kill -9`) sees either the old file or the new one, never half of one. A panel
counts as done only when the manifest says so, its settings hash matches and its file has the recorded digest.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image, PngImagePlugin

from core.io.cache import cached_sha256
from core.io.paths import atomic_path, remove_stale_temporaries, sha256_file  # noqa: F401 - part of this module's names (render, tests)

MANIFEST_NAME = "manifest.json"
PANELS_DIR = "panels"
PAGES_DIR = "pages"
DONE, FAILED = "done", "failed"


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write `data` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


def write_png_atomic(image: Image.Image, path: str | os.PathLike,
                     pnginfo: PngImagePlugin.PngInfo | None = None) -> Path:
    """Save `image` as PNG at `path` atomically (with optional text chunks `pnginfo`)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=pnginfo)
    return Path(path)


def panel_filename(index: int) -> str:
    """The panel file of 0-based `index`, relative to the render folder (``panels/panel-001.png``)."""
    return f"{PANELS_DIR}/panel-{index + 1:03d}.png"


@dataclass(frozen=True)
class PanelRecord:
    """One panel's outcome. `file` is relative to the render folder; `error` is set when `status` is failed."""

    index: int
    settings_hash: str
    seed: int
    status: str
    file: str | None = None
    file_sha256: str | None = None
    error: str | None = None


@dataclass
class RenderManifest:
    """The story (its JSON form) and the panel records, keyed by 0-based panel index."""

    story: dict[str, Any] = field(default_factory=dict)
    panels: dict[int, PanelRecord] = field(default_factory=dict)
    edits: dict[int, dict] = field(default_factory=dict)  # panel edits (core.story.edit), kept by every render

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": "instantcharacter-story-manifest",
            "version": 1,
            "story": self.story,
            "panels": [asdict(self.panels[i]) for i in sorted(self.panels)],
        }
        if self.edits:
            data["edits"] = {str(i): self.edits[i] for i in sorted(self.edits)}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderManifest:
        records = {int(r["index"]): PanelRecord(**r) for r in data.get("panels", [])}
        edits = {int(k): dict(v) for k, v in (data.get("edits") or {}).items() if isinstance(v, dict)}
        return cls(story=data.get("story", {}), panels=records, edits=edits)

    def record(self, record: PanelRecord) -> None:
        self.panels[record.index] = record

    def done(self) -> dict[int, PanelRecord]:
        return {i: r for i, r in self.panels.items() if r.status == DONE}

    def failed(self) -> dict[int, PanelRecord]:
        return {i: r for i, r in self.panels.items() if r.status == FAILED}


def part_path(out_dir: str | os.PathLike, rank: int) -> Path:
    """The manifest part written by process `rank` of a multi-process render."""
    return Path(out_dir) / f"manifest.part-{rank}.json"


def _part_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("manifest.part-*.json"))


def _read(path: Path) -> RenderManifest | None:
    try:
        return RenderManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # written atomically, so unreadable means foreign or damaged: render again rather than trust it


def load_manifest(out_dir: str | os.PathLike) -> RenderManifest:
    """The manifest of `out_dir` with any part files of an interrupted multi-process render folded in.

    Part records are newer than the main file's (parts are merged and deleted when a render ends); between parts,
    a done record wins over a failed one. An absent folder or manifest gives an empty manifest.
    """
    out_dir = Path(out_dir)
    manifest = _read(out_dir / MANIFEST_NAME) or RenderManifest()
    from_parts: dict[int, PanelRecord] = {}
    for path in _part_files(out_dir):
        part = _read(path)
        if part is None:
            continue
        if not manifest.story and part.story:
            manifest.story = part.story
        for index, rec in part.panels.items():
            if index not in from_parts or rec.status == DONE:
                from_parts[index] = rec
    manifest.panels.update(from_parts)
    return manifest


def save_manifest(manifest: RenderManifest, out_dir: str | os.PathLike) -> Path:
    return write_json_atomic(manifest.to_dict(), Path(out_dir) / MANIFEST_NAME)


def remove_parts(out_dir: str | os.PathLike) -> None:
    for path in _part_files(Path(out_dir)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files `atomic_path` leaves when a process is killed mid-write (``.NAME.*.tmp`` in the
    render folder, its panel and page folders); returns what was removed. Call only when no render is writing
    there (every such file is then stale, whatever its age)."""
    out_dir = Path(out_dir)
    return [path for folder in (out_dir, out_dir / PANELS_DIR, out_dir / PAGES_DIR)
            for path in remove_stale_temporaries(folder, older_than_s=0.0)]


def merge_parts(out_dir: str | os.PathLike) -> RenderManifest:
    """Fold the part files into manifest.json and delete them (rank 0, after every process finished)."""
    manifest = load_manifest(out_dir)
    save_manifest(manifest, out_dir)
    remove_parts(out_dir)
    return manifest


def file_inside(out_dir: str | os.PathLike, relative: Any) -> Path | None:
    """``out_dir / relative`` for a file the manifest names, or None when that is not a plain file inside the
    render folder (an absolute or ``..`` path, a link, or a folder on the way that links elsewhere)."""
    if not isinstance(relative, str) or not relative:
        return None
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    path = Path(out_dir) / rel
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return path if path.resolve().is_relative_to(Path(out_dir).resolve()) else None
    except (OSError, RuntimeError):
        return None


def is_panel_done(record: PanelRecord | None, settings_hash: str, out_dir: str | os.PathLike) -> bool:
    """True when `record` is a finished render of these settings whose file is present and intact (its digest is
    remembered by size and time, so asking again for an unchanged file does not read it again)."""
    if record is None or record.status != DONE or record.settings_hash != settings_hash or not record.file:
        return False
    path = file_inside(out_dir, record.file)
    if path is None:
        return False
    try:
        return record.file_sha256 is None or cached_sha256(path) == record.file_sha256
    except OSError:
        return False
