"""A panel's request and its settings hash: every input that changes its pixels, so a resumed render knows what
is done.

The settings are read from the summary of the panel's request (`core.request.GenerationRequest.summary`, the
engine's own "same image" key); its images stand there as the story's file digests (the summary's content keys
would need every image decoded just to tell what is done). A panel counts as rendered when its manifest record
(`core.story.manifest`) has the hash of its settings as they are now, with its live edit (`core.story.edit`) folded
in by `edited_hash`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from typing import Any

from core.conditioning.control import load_control
from core.request import GenerationRequest
from core.story.manifest import RenderManifest, is_panel_done
from core.story.model import FORMAT_VERSION, Panel, Story


# Pipeline options that are fields of the request (and so of its record), by pipeline argument name; the other
# options go to the pipeline as they are. All of them are part of the settings hash.
REQUEST_OPTIONS = {"negative_prompt": "negative_prompt", "true_cfg_scale": "true_cfg_scale",
                   "num_inference_steps": "steps", "guidance_scale": "guidance", "height": "height",
                   "width": "width", "max_sequence_length": "max_sequence_length"}


def _story_request(story: Story, panel: Panel, characters: list[Any]) -> GenerationRequest:
    """The request of a panel from the story alone: its engine prompt, characters and seed, the story's settings."""
    width, height = story.panel_size(panel)
    return GenerationRequest(
        prompt=story.engine_prompt(panel), characters=list(characters), negative_prompt=story.negative or None,
        true_cfg_scale=story.true_cfg, steps=story.steps, guidance=story.guidance, width=width,
        height=height, seed=panel.seed)


def panel_request(story: Story, panel: Panel, characters: list[Any], options: dict[str, Any] | None = None,
                  edit: Any = None) -> GenerationRequest:
    """The `core.request.GenerationRequest` of a panel: its engine prompt, characters and seed, the story's
    settings, and the `options` that are request fields (``max_sequence_length``...)."""
    request = _story_request(story, panel, characters)
    fields = {REQUEST_OPTIONS[k]: v for k, v in (options or {}).items() if k in REQUEST_OPTIONS}
    if panel.controls:
        fields["controls"] = [load_control(c.image, c.kind, c.scale, name=f"the {c.kind} control image of panel "
                                                                          f"{panel.number}") for c in panel.controls]
    request = replace(request, **fields) if fields else request
    return edit.apply(request) if edit is not None else request  # a core.story.edit.PanelEdit


def panel_settings(story: Story, panel: Panel, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every input that changes a panel's pixels (captions and dialogue do not): the summary of its request, its
    character and control images as their file digests, and the render `options` as given.

    The keys and values are those of the hashes stories were rendered with before the request existed, so render
    folders made then resume without rendering again.
    """
    summary = _story_request(story, panel, []).summary()
    characters = [story.characters[name] for name in panel.characters]
    return {
        "version": FORMAT_VERSION,
        "prompt": summary["prompt"],
        "negative": summary["negative_prompt"] or "",
        "seed": summary["seed"],
        "size": [summary["width"], summary["height"]],
        "steps": summary["steps"],
        "guidance": summary["guidance"],
        "true_cfg": summary["true_cfg_scale"],
        "characters": [
            {
                "name": c.name,
                "image_sha256": c.image_sha256,
                "scale": c.scale,
                "region": panel.regions.get(c.name),
                # keys only when they reach the model, so panels made before they did keep their hashes
                **({"description": c.description} if c.description else {}),
            }
            for c in characters
        ],
        "options": {k: options[k] for k in sorted(options or {})},
        # only with control images: the hashes of the panels of before stay as they were
        **({"controls": [{"kind": c.kind, "image_sha256": c.image_sha256, "scale": c.scale} for c in panel.controls]}
           if panel.controls else {}),
        # two or more characters are placed in regions (theirs or the automatic layout): regional text's default
        **({"regional_text": summary["regional_text"]} if len(characters) >= 2 else {}),
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
