"""Render a story's panels with the engine, resumably, on one process or split across several.

`render_story` calls the pipeline once per panel that still needs rendering (see `manifest.panels_to_render`),
with a CPU generator seeded by the panel's seed, so a panel's pixels depend only on its own settings: the same on
a resumed render, on any rank, in any order. Character images are read once per story and every panel gets
`Character` objects holding the same image objects, so the pipeline's content-keyed feature cache computes each
character's features once.

Each panel PNG carries the studio's own metadata (`core.metadata.GenerationRecord`: the ``parameters`` and
``instantcharacter`` chunks), so dropping a panel into the studio's Recall brings back its prompt, seed, size,
steps and characters with their regions. What only a story knows (title, panel number, caption, settings hash)
goes in one more chunk, ``instantcharacter-story``.

With several processes (``torchrun``/``accelerate launch``) every rank computes the same to-do list, takes its
share with `split_between_processes`, and writes its records to its own manifest part; rank 0 merges the parts
when all are finished. Panel files and the merged manifest are the same as a single process would write.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from core.story.format import Panel, Story, engine_mask, panel_settings_hash
from core.story.manifest import (
    DONE,
    FAILED,
    PanelRecord,
    RenderManifest,
    load_manifest,
    merge_parts,
    panel_filename,
    panels_to_render,
    part_path,
    remove_parts,
    remove_temporaries,
    save_manifest,
    sha256_file,
    write_json_atomic,
    write_png_atomic,
)

PNG_METADATA_KEY = "instantcharacter-story"
# Pipeline options that GenerationRecord stores as fields of its own (the rest only reach the settings hash).
_RECORD_OPTIONS = ("max_sequence_length",)


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


def _default_character_factory() -> Callable[..., Any]:
    from core.character import Character

    return Character


class CharacterLibrary:
    """The story's character images, read once, and the `Character` objects made from them, reused per panel."""

    def __init__(self, story: Story, make_character: Callable[..., Any] | None = None):
        self.story = story
        self.make_character = make_character or _default_character_factory()
        self.images: dict[str, Image.Image] = {}
        self._characters: dict[tuple[str, str | None], Any] = {}
        self._records: dict[tuple[str, str | None], Any] = {}

    def image(self, name: str) -> Image.Image:
        if name not in self.images:
            from core.images import load_image

            # the engine's loader: EXIF orientation applied, alpha composited on white, as for a Character
            self.images[name] = load_image(self.story.characters[name].image, name=f"character [{name}]")
        return self.images[name]

    def for_panel(self, panel: Panel) -> list[Any]:
        """The panel's characters, in prompt order, with its regions as masks."""
        characters = []
        for name in panel.characters:
            region = panel.regions.get(name)
            key = (name, region)
            if key not in self._characters:
                spec = self.story.characters[name]
                self._characters[key] = self.make_character(
                    self.image(name), name=name, scale=spec.scale, mask=engine_mask(region)
                )
            characters.append(self._characters[key])
        return characters

    def records_for_panel(self, panel: Panel) -> list[Any]:
        """`core.metadata.CharacterRecord`s of the panel's characters (image as sent, name, scale, region)."""
        from core.masks import RoutingMask
        from core.metadata import CharacterRecord, image_to_b64

        records = []
        for name in panel.characters:
            region = panel.regions.get(name)
            key = (name, region)
            if key not in self._records:
                mask = RoutingMask.from_spec(engine_mask(region))
                # the story's description is a note for people, not words for the text encoders: not recorded
                self._records[key] = CharacterRecord(
                    image=image_to_b64(self.image(name)), name=name, scale=self.story.characters[name].scale,
                    mask=mask.to_json() if mask is not None else None)
            records.append(self._records[key])
        return records


def generation_record(story: Story, panel: Panel, characters: list[Any], options: dict[str, Any] | None = None,
                      record_fields: Mapping[str, Any] | None = None) -> Any:
    """The `core.metadata.GenerationRecord` of a panel: what Recall needs to make the same image again.

    `characters` are `CharacterRecord`s (`CharacterLibrary.records_for_panel`); `record_fields` adds the fields a
    story does not know (``models``, ``dtype``, ``preset``).
    """
    from core.metadata import GenerationRecord

    fields = {k: v for k, v in (options or {}).items() if k in _RECORD_OPTIONS}
    fields.update(record_fields or {})
    return GenerationRecord(
        prompt=story.engine_prompt(panel), seed=panel.seed, width=story.width, height=story.height,
        num_inference_steps=story.steps, guidance_scale=story.guidance, negative_prompt=story.negative or None,
        true_cfg_scale=story.true_cfg, characters=list(characters), **fields)


def panel_pnginfo(story: Story, panel: Panel, settings_hash: str, record: Any = None) -> PngImagePlugin.PngInfo:
    """The text chunks of a panel PNG: `record`'s (``parameters`` and ``instantcharacter``, see `core.metadata`)
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


def render_panel(story: Story, panel: Panel, pipe: Any, characters: list[Any],
                 options: dict[str, Any] | None = None) -> Image.Image:
    """Call the engine for one panel and return its image."""
    import torch

    kwargs = dict(
        prompt=story.engine_prompt(panel),
        characters=characters,
        negative_prompt=story.negative or None,
        true_cfg_scale=story.true_cfg,
        num_inference_steps=story.steps,
        guidance_scale=story.guidance,
        height=story.height,
        width=story.width,
        generator=torch.Generator("cpu").manual_seed(panel.seed),
        output_type="pil",
    )
    kwargs.update(options or {})
    image = pipe(**kwargs).images[0]
    if not isinstance(image, Image.Image):
        raise TypeError(f"the pipeline returned {type(image).__name__}, expected a PIL image")
    return image


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
    pipe: Any,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: Callable[[PanelProgress], None] | None = None,
    state: Any = None,
    options: dict[str, Any] | None = None,
    only: Iterable[int] | None = None,
    make_character: Callable[..., Any] | None = None,
    record_fields: Mapping[str, Any] | None = None,
) -> RenderResult:
    """Render the panels of `story` into `out_dir` and record them in its manifest.

    Args:
        story: the parsed story.
        pipe: an `InstantCharacterPipeline` (or anything called the same way, returning `.images`).
        out_dir: the render folder; created if needed.
        resume: keep panels already done with the same settings; without it every panel is rendered again
            and the old records are forgotten.
        progress: called with a `PanelProgress` before and after each panel.
        state: an `accelerate.PartialState` (or `None`: one made when `WORLD_SIZE` > 1, else a single process).
        options: extra pipeline keyword arguments (e.g. from a preset); they are part of the settings hash.
        only: render exactly these panel indices, done or not, keeping the other records (e.g. to regenerate
            one panel after `Story.with_panel_seed`).
        make_character: builds a character as `make_character(image, name=, scale=, mask=)`;
            default `core.character.Character`.
        record_fields: `core.metadata.GenerationRecord` fields for every panel's PNG metadata that the story does
            not hold, e.g. ``{"models": {...}, "dtype": "float32", "preset": "full"}``. They are not part of the
            settings hash: they say how the engine was loaded, not what it was asked for.

    A panel that raises (out of memory, a bad mask...) is recorded as failed with its error and the others go on.
    """
    out_dir = Path(out_dir)
    state = state if state is not None else _default_state()
    rank, world = state.process_index, state.num_processes
    out_dir.mkdir(parents=True, exist_ok=True)

    keep_records = resume or only is not None
    manifest = load_manifest(out_dir) if keep_records else RenderManifest()
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
    library = CharacterLibrary(story, make_character)
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
        if progress:
            progress(PanelProgress(index, "rendering", completed, len(mine)))
        try:
            image = render_panel(story, panel, pipe, library.for_panel(panel), options)
            file = panel_filename(index)
            metadata = generation_record(story, panel, library.records_for_panel(panel), options, record_fields)
            write_png_atomic(image, out_dir / file, pnginfo=panel_pnginfo(story, panel, settings_hash, metadata))
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
