"""Render a story's panels with the engine, resumably, on one process or split across several.

`render_story` asks the engine (`core.engine.Engine`) for one `GenerationRequest` per panel that still needs
rendering (see `settings.panels_to_render`), seeded with the panel's seed, so a panel's pixels depend only on its
own settings: the same on a resumed render, on any rank, in any order. Character images are read once per story
and every panel gets `Character` objects holding the same image objects, so the pipeline's content-keyed feature
cache computes each character's features once.

Each panel PNG carries the studio's own metadata: the engine's `core.io.metadata.GenerationRecord` of the request
(the ``parameters`` and ``instantcharacter`` chunks, with the models, dtype and preset it was made with), so
dropping a panel into the studio's Recall brings back its prompt, seed, size, steps and characters with their
regions. What only a story knows (title, panel number, caption, settings hash) goes in one more chunk,
``instantcharacter-story``.

With several processes (``torchrun``/``accelerate launch``) every rank computes the same to-do list, takes its
share with `split_between_processes`, and writes its records to its own manifest part; rank 0 merges the parts
when all are finished. Panel files and the merged manifest are the same as a single process would write.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from core.conditioning.character import Character
from core.conditioning.control import load_control
from core.io.images import load_image
from core.io.metadata import save_controls_beside
from core.story.edit import panel_edit
from core.story.manifest import (
    DONE,
    FAILED,
    PanelRecord,
    RenderManifest,
    load_manifest,
    merge_parts,
    panel_filename,
    part_path,
    remove_parts,
    remove_temporaries,
    save_manifest,
    sha256_file,
    write_json_atomic,
    write_png_atomic,
)
from core.story.model import Panel, Story
from core.story.regions import engine_mask
from core.story.settings import (
    REQUEST_OPTIONS,
    edited_hash,
    panel_request,
    panel_settings_hash,
    panels_to_render,
)

PNG_METADATA_KEY = "instantcharacter-story"



@dataclass(frozen=True)
class PanelProgress:
    """A progress event: `status` is "rendering", "done" or "failed"; `completed` counts this process's
    finished panels (done or failed) out of its `total`."""

    index: int
    status: str
    completed: int
    total: int
    error: str | None = None


@dataclass
class RenderResult:
    """What this process did. On rank 0 of a multi-process render, `manifest` is the merged one."""

    rendered: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    manifest: RenderManifest = field(default_factory=RenderManifest)
    notes: list[str] = field(default_factory=list)  # the engine's notes, each once for the whole story
    cancelled: bool = False  # stopped by ``cancel``: the panels done before are kept, resume continues


class RenderCancelled(Exception):
    """The engine stopped a panel because the render's ``cancel`` event was set (nothing of it was written)."""


class _SingleProcess:
    """The part of `accelerate.PartialState` that rendering uses, for one process."""

    process_index = 0
    num_processes = 1

    def wait_for_everyone(self) -> None:
        pass


def _default_state() -> Any:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState()
    return _SingleProcess()


def _split(state: Any, items: list[int]) -> list[int]:
    if state.num_processes == 1:
        return list(items)
    with state.split_between_processes(items) as mine:
        return list(mine)


class CharacterLibrary:
    """The story's character images, read once, and the `Character` objects made from them, reused per panel."""

    def __init__(self, story: Story):
        self.story = story
        self.images: dict[str, Image.Image] = {}
        self._characters: dict[tuple[str, str | None], Any] = {}

    def image(self, name: str) -> Image.Image:
        if name not in self.images:
            # the engine's loader: EXIF orientation applied, alpha composited on white, as for a Character
            self.images[name] = load_image(self.story.characters[name].image, name=f"character [{name}]")
        return self.images[name]

    def for_panel(self, panel: Panel) -> list[Any]:
        """The panel's characters, in prompt order, with its regions as masks and the story's ``description``
        lines as their words (what replaces ``[Name]`` for the text encoders, recorded in the panel's PNG)."""
        characters = []
        for name in panel.characters:
            region = panel.regions.get(name)
            key = (name, region)
            if key not in self._characters:
                spec = self.story.characters[name]
                self._characters[key] = Character(self.image(name), name=name, scale=spec.scale,
                                                  mask=engine_mask(region), description=spec.description or None)
            characters.append(self._characters[key])
        return characters


def panel_pnginfo(story: Story, panel: Panel, settings_hash: str, record: Any = None) -> PngImagePlugin.PngInfo:
    """The text chunks of a panel PNG: `record`'s (``parameters`` and ``instantcharacter``, see `core.io.metadata`)
    when given, plus ``instantcharacter-story`` (title, panel number, caption, seed, regions, settings hash)."""
    info = record.pnginfo() if record is not None else PngImagePlugin.PngInfo()
    info.add_text(PNG_METADATA_KEY, json.dumps({
        "title": story.title,
        "panel": panel.number,
        "caption": panel.caption,
        "seed": panel.seed,
        "seed_pinned": panel.seed_pinned,
        "story_seed": story.seed,
        "regions": dict(panel.regions),
        "settings_hash": settings_hash,
    }, ensure_ascii=False))
    return info


def render_panel(story: Story, panel: Panel, engine: Any, characters: list[Any],
                 options: dict[str, Any] | None = None, *, report=None, cancel=None,
                 notes: list[str] | None = None, edit: Any = None) -> tuple[Image.Image, Any]:
    """Asks the engine for one panel: ``(image, record)``, the record being the engine's `GenerationRecord` of the
    panel's request (settings, characters, and the models, dtype and preset it was made with).

    ``report(fraction, message)`` hears each denoising step; a set ``cancel`` event stops the engine at its next
    step and raises `RenderCancelled`; the engine's notes are added to ``notes`` when given."""
    pipeline_options = {"output_type": "pil",
                        **{k: v for k, v in (options or {}).items() if k not in REQUEST_OPTIONS}}
    control = {k: v for k, v in (("report", report), ("cancel", cancel)) if v is not None}
    result = engine.generate(panel_request(story, panel, characters, options, edit), pipeline_options=pipeline_options,
                             **control)
    if getattr(result, "cancelled", False):
        raise RenderCancelled
    if notes is not None:
        notes += [n for n in result.notes if n not in notes]
    if not result.images:
        raise RuntimeError("the engine returned no image" + (f" ({'; '.join(result.notes)})" if result.notes else ""))
    image = result.images[0]
    if not isinstance(image, Image.Image):
        raise TypeError(f"the pipeline returned {type(image).__name__}, expected a PIL image")
    return image, result.records[0]


def _free_accelerator_memory() -> None:
    """After a failure (often out of memory), give cached blocks back so the next panel has a chance."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort only
        pass


def render_story(
    story: Story,
    engine: Any,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: Callable[[PanelProgress], None] | None = None,
    state: Any = None,
    options: dict[str, Any] | None = None,
    only: Iterable[int] | None = None,
    cancel: Any = None,
    step_progress: Callable[[int, float, str], None] | None = None,
) -> RenderResult:
    """Render the panels of `story` into `out_dir` and record them in its manifest.

    Args:
        story: the parsed story.
        engine: a `core.engine.Engine` (or anything with its ``generate(request, pipeline_options=)``); it may
            be `None` when there is nothing to render.
        out_dir: the render folder; created if needed.
        resume: keep panels already done with the same settings; without it every panel is rendered again
            and the old records are forgotten.
        progress: called with a `PanelProgress` before and after each panel.
        state: an `accelerate.PartialState` (or `None`: one made when `WORLD_SIZE` > 1, else a single process).
        options: extra pipeline keyword arguments (e.g. from a preset); they are part of the settings hash.
            Those that are request fields (``max_sequence_length``, ``num_inference_steps``...) replace the
            story's values in the request; the others go to the pipeline as they are.
        only: render exactly these panel indices, done or not, keeping the other records (e.g. to regenerate
            one panel after `Story.with_panel_seed`).
        cancel: a ``threading.Event``: once set, the panel being drawn stops at its next denoising step (nothing of
            it is written) and the render returns with ``cancelled``; a resumed render continues from there.
        step_progress: ``fn(panel index, fraction of the panel done, message)`` after every denoising step.

    A panel that raises (out of memory, a bad mask...) is recorded as failed with its error and the others go on.
    """
    out_dir = Path(out_dir)
    state = state if state is not None else _default_state()
    rank, world = state.process_index, state.num_processes
    out_dir.mkdir(parents=True, exist_ok=True)

    keep_records = resume or only is not None
    manifest = load_manifest(out_dir) if keep_records else RenderManifest(edits=load_manifest(out_dir).edits)
    manifest.story = story.to_dict(relative_to=out_dir)
    if only is not None:
        todo = sorted({int(i) for i in only if 0 <= int(i) < len(story.panels)})
    elif resume:
        todo = panels_to_render(story, manifest, out_dir, options)
    else:
        todo = [panel.index for panel in story.panels]
    result = RenderResult(skipped=[p.index for p in story.panels if p.index not in set(todo)])
    # Everyone reads the manifest before rank 0 rewrites it: the records kept (old parts folded in) or none.
    state.wait_for_everyone()
    if rank == 0:
        save_manifest(manifest, out_dir)
        remove_parts(out_dir)
        remove_temporaries(out_dir)  # left by a killed render; never taken as panels, but clutter the folder
    state.wait_for_everyone()

    mine = _split(state, todo)
    library = CharacterLibrary(story)
    own = RenderManifest(story=manifest.story)

    def record(rec: PanelRecord) -> None:
        if world == 1:
            manifest.record(rec)
            save_manifest(manifest, out_dir)
        else:
            own.record(rec)
            write_json_atomic(own.to_dict(), part_path(out_dir, rank))

    for completed, index in enumerate(mine):
        panel = story.panels[index]
        settings_hash = panel_settings_hash(story, panel, options)
        edit = None
        if manifest.edits.get(index):  # an edited panel (core.story.edit): rendered as that edit again
            try:
                edit = panel_edit(manifest.edits, index, settings_hash, out_dir)
            except Exception as exc:  # noqa: BLE001 - a missing or changed source fails this panel only
                edit = exc
            if edit is None:
                result.notes.append(f"panel {panel.number} changed since it was edited: its edit is not applied")
            settings_hash = edited_hash(settings_hash, manifest.edits[index])
        if progress:
            progress(PanelProgress(index, "rendering", completed, len(mine)))
        if cancel is not None and cancel.is_set():
            result.cancelled = True
            break
        step = None if step_progress is None else (lambda f, m, index=index: step_progress(index, f, m))
        try:
            if isinstance(edit, Exception):
                raise edit
            image, metadata = render_panel(story, panel, engine, library.for_panel(panel), options, report=step,
                                           cancel=cancel, notes=result.notes, edit=edit)
            file = panel_filename(index)
            write_png_atomic(image, out_dir / file, pnginfo=panel_pnginfo(story, panel, settings_hash, metadata))
            if panel.controls:  # beside the panel, as the record names them, so Recall finds them
                save_controls_beside([load_control(c.image, c.kind, c.scale) for c in panel.controls],
                                     (out_dir / file).parent)
        except RenderCancelled:
            result.cancelled = True
            break
        except Exception as exc:  # noqa: BLE001 - any engine failure marks this panel, the story goes on
            error = f"{type(exc).__name__}: {exc}"
            record(PanelRecord(index, settings_hash, panel.seed, FAILED, error=error))
            result.failed[index] = error
            _free_accelerator_memory()
            if progress:
                progress(PanelProgress(index, FAILED, completed + 1, len(mine), error))
            continue
        record(PanelRecord(index, settings_hash, panel.seed, DONE, file=file,
                           file_sha256=sha256_file(out_dir / file)))
        result.rendered.append(index)
        if progress:
            progress(PanelProgress(index, DONE, completed + 1, len(mine)))

    if world > 1:
        state.wait_for_everyone()
        if rank == 0:
            manifest = merge_parts(out_dir)
        state.wait_for_everyone()
        if rank != 0:
            manifest = load_manifest(out_dir)
    result.manifest = manifest
    return result
