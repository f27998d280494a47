"""A panel's settings hash: every input that changes its pixels, so a resumed render knows what is done.

A panel counts as rendered when its manifest record (`core.story.manifest`) has the hash of its settings as they are
now, with its live edit (`core.story.edit`) folded in by `edited_hash`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from core.conditioning.regional_text import RegionalText
from core.story.manifest import RenderManifest, is_panel_done
from core.story.model import FORMAT_VERSION, Panel, Story


def panel_settings(story: Story, panel: Panel, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every input that changes a panel's pixels (captions and dialogue do not)."""
    return {
        "version": FORMAT_VERSION,
        "prompt": story.engine_prompt(panel),
        "negative": story.negative,
        "seed": panel.seed,
        "size": list(story.panel_size(panel)),
        "steps": story.steps,
        "guidance": story.guidance,
        "true_cfg": story.true_cfg,
        "characters": [
            {
                "name": name,
                "image_sha256": story.characters[name].image_sha256,
                "scale": story.characters[name].scale,
                "region": panel.regions.get(name),
                # keys only when they reach the model, so panels made before they did keep their hashes
                **({"description": story.characters[name].description}
                   if story.characters[name].description else {}),
            }
            for name in panel.characters
        ],
        "options": {k: options[k] for k in sorted(options or {})},
        # only with control images: the hashes of the panels of before stay as they were
        **({"controls": [{"kind": c.kind, "image_sha256": c.image_sha256, "scale": c.scale} for c in panel.controls]}
           if panel.controls else {}),
        # two or more characters are placed in regions (theirs or the automatic layout): regional text's default
        **({"regional_text": RegionalText().to_json()} if len(panel.characters) >= 2 else {}),
    }


def panel_settings_hash(story: Story, panel: Panel, options: dict[str, Any] | None = None) -> str:
    """A hex digest of `panel_settings`: equal digests mean the same render."""
    blob = json.dumps(panel_settings(story, panel, options), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def edited_hash(base_hash: str, edit: dict | None) -> str:
    """The settings hash of a panel with ``edit`` applied (``base_hash`` itself without a live edit)."""
    if not edit or edit.get("base_hash") != base_hash:
        return base_hash
    blob = json.dumps({"base": base_hash, "edit": edit}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def panels_to_render(story: Story, manifest: RenderManifest, out_dir: str | os.PathLike,
                     options: dict[str, Any] | None = None) -> list[int]:
    """Indices of the panels that still need rendering: never rendered, failed, changed, or file missing."""
    return [
        panel.index
        for panel in story.panels
        if not is_panel_done(manifest.panels.get(panel.index),
                             edited_hash(panel_settings_hash(story, panel, options), manifest.edits.get(panel.index)),
                             out_dir)
    ]
