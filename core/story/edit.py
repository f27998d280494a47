"""Edits of story panels, kept in the render manifest so a resumed render keeps them and a re-render repeats them.

``story edit`` (and the Story tab) takes a rendered panel as the source of an image-to-image or inpainting edit.
The source is saved beside the panel (``panels/source-<digest[:16]>.png``, the name every edit PNG records) and the
edit goes into the manifest's ``edits`` (by 0-based panel index)::

    {"source_file": "panels/source-....png", "source_sha256": ..., "strength": 0.6, "region": <mask JSON or null>,
     "seed": 12, "base_hash": <the panel's settings hash when it was edited>}

From then on the panel renders as that edit (the same request, so the same bytes) and its record's settings hash is
:func:`core.story.settings.edited_hash`. When the panel's own settings change (its prompt, seed, size...),
``base_hash`` no longer matches: the edit is stale and the panel renders from its new settings, with a note.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.conditioning.edit import check_region, check_strength, load_region, load_source
from core.conditioning.masks import RoutingMask
from core.io.images import rgb_digest
from core.io.metadata import read_edit_source, save_edit_source
from core.story.manifest import PANELS_DIR, file_inside, is_panel_done, load_manifest, save_manifest
from core.story.model import StoryError
from core.story.settings import edited_hash, panel_settings_hash


@dataclass
class PanelEdit:
    """One panel's edit as the manifest stores it, with its source image once read."""

    index: int
    source_file: str
    source_sha256: str
    strength: float
    region: Any = None
    seed: int | None = None
    base_hash: str = ""
    source: Any = None  # the PIL source image (read by :func:`panel_edit`)

    def to_dict(self) -> dict:
        return {"source_file": self.source_file, "source_sha256": self.source_sha256, "strength": self.strength,
                "region": self.region, "seed": self.seed, "base_hash": self.base_hash}

    def apply(self, request):
        """The panel's request made this edit: same prompt and characters, the source, strength, region, seed."""
        changes = dict(source_image=self.source, strength=self.strength,
                       inpaint_region=RoutingMask.from_json(self.region, "the panel edit's region"))
        if self.seed is not None:
            changes["seed"] = self.seed
        return replace(request, **changes)


def panel_edit(edits: dict, index: int, base_hash: str, out_dir: str | os.PathLike) -> PanelEdit | None:
    """The live edit of panel ``index`` with its source read from the render folder, or None (no edit, or a
    stale one). Raises :class:`core.io.metadata.MetadataError` when the source is missing or was changed."""
    data = edits.get(index)
    if not data or data.get("base_hash") != base_hash:
        return None
    path = file_inside(out_dir, data.get("source_file"))
    folder = path.parent if path is not None else Path(out_dir) / PANELS_DIR
    name = Path(str(data.get("source_file"))).name
    source = read_edit_source({"source_file": name, "source_sha256": data["source_sha256"]}, folder)
    return PanelEdit(index=index, source=source, **{k: data.get(k) for k in (
        "source_file", "source_sha256", "strength", "region", "seed", "base_hash")})


def record_edit(out_dir: str | os.PathLike, index: int, source, strength: float, region, seed: int | None,
                base_hash: str) -> dict:
    """Saves ``source`` beside the panels and returns the manifest entry of the edit."""
    digest = rgb_digest(source)
    name = f"source-{digest[:16]}.png"
    save_edit_source(source, Path(out_dir) / PANELS_DIR, {"source_file": name, "source_sha256": digest})
    return {"source_file": f"{PANELS_DIR}/{name}", "source_sha256": digest, "strength": check_strength(strength),
            "region": region.to_json() if region is not None else None, "seed": seed, "base_hash": base_hash}


def prepare_panel_edit(story, out_dir: str | os.PathLike, index: int, strength: float = 0.6, region=None,
                       seed: int | None = None, undo: bool = False, region_name: str = "the region") -> list[str]:
    """Records (or with ``undo`` drops) the edit of panel ``index`` in the manifest of ``out_dir``; the next
    render of that panel makes it. The source is the panel as it is now (edited or not). ``region``: a mask image
    path, a layout or box spec, or None for the whole panel. Returns notes; raises ``StoryError`` for a panel not
    rendered with these settings or nothing to undo, ``EditError`` / ``ImageInputError`` for a bad edit."""
    if not 0 <= index < len(story.panels):
        raise StoryError(f"panel {index + 1}: the story has {len(story.panels)} panels")
    number, out_dir = index + 1, Path(out_dir)
    manifest = load_manifest(out_dir)
    base = panel_settings_hash(story, story.panels[index])
    notes: list[str] = []
    if undo:
        if manifest.edits.pop(index, None) is None:
            raise StoryError(f"panel {number} has no edit to undo")
    else:
        strength = check_strength(strength)
        record = manifest.panels.get(index)
        if not is_panel_done(record, edited_hash(base, manifest.edits.get(index)), out_dir):
            raise StoryError(f"panel {number} is not rendered in {out_dir} with these settings: render it first")
        source = load_source(file_inside(out_dir, record.file), f"panel {number}")
        mask = None
        if region is not None:
            mask, notes = load_region(region, source.size, region_name)
            check_region(mask, *source.size)
        manifest.edits[index] = record_edit(out_dir, index, source, strength, mask, seed, base)
    save_manifest(manifest, out_dir)
    return notes
