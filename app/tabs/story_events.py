"""The Story tab's event handlers: plain functions of the page's values, testable without a browser.

The story text is the source of truth: character image paths in it are relative to the tab's *story folder* (the
examples' folder after loading an example), and "New seed" writes a ``seed:`` line under the panel so the next
render keeps it. Renders go to ``OUTPUT_DIR/stories/<title>/`` and resume there: Render only draws the panels
that are missing or whose settings changed.
Every parse goes through the studio's path policy (``ctx.paths``): the story folder and every character image must
be inside the studio's own folders, and the story's limits (``core/limits.py``) are checked before anything else.
No ``from __future__ import annotations`` here: Gradio reads the ``gr.Request`` annotations at runtime.
"""

import base64
import dataclasses
import html
import io
import math
import random
import re
from pathlib import Path

import gradio as gr

from core.io.paths import write_bytes_atomic
from core.limits import MAX_SEED, short_repr
from core.io.path_policy import PathNotAllowedError, PathPolicy
from core.story import Story, StoryError, parse_story
from core.story.drawing import compose_page, missing_glyph_warnings
from core.story.export import export_story, load_panel_images
from core.story.geometry import WEBTOON, plan_pages
from core.story.manifest import FAILED, file_inside, is_panel_done, load_manifest
from core.story.parse_text import check_story_text, pin_seed
from core.story.settings import panel_settings_hash

from ..context import StudioContext
from ..errors import StudioInputError, shown_to_user
from ..running import SessionRuns, cancel_button, cancelling_button, session_of
from ..spaces import estimate_duration, gpu_function
from ..wording import counted

STORIES_DIR = Path(__file__).resolve().parents[2] / "assets" / "stories"
CHARACTERS_DIR = "characters"  # library characters added to a story are copied here, beside the story
PANEL_HEADERS = ["#", "line", "characters", "prompt", "caption", "seed", "status"]
PREVIEW_DPI = 60  # page previews while editing: enough to see the layout, quick to draw on every edit
PREVIEW_PAGES = 4  # the preview draws only the first pages, so an edit costs the same however long the story
PREVIEW_PANEL_SIDE = 512  # rendered panels are shrunk to this before they go on a preview page
_SLUG = re.compile(r"[\W_]+")  # any script's letters and digits stay: "赤いポストマン" is its own folder


class RenderCancelled(Exception):
    """Raised from the progress callback between panels when the user pressed Cancel."""


def engine_notes(notes: list[str]) -> list[str]:
    """The engine's notes for the whole story, each once (the CLIP note, characters never named...)."""
    return [n[0].upper() + n[1:] + ("" if n.endswith(".") else ".") for n in notes if n]


def example_names() -> list[str]:
    return sorted(p.name for p in STORIES_DIR.glob("*.story"))


def load_example(name: str) -> tuple[str, str]:
    """``(story text, story folder)`` of an example in ``assets/stories``."""
    path = STORIES_DIR / str(name or "")
    if not name or path.parent != STORIES_DIR or not path.is_file():
        raise StudioInputError(f"no example story named {name!r}; choose one of {', '.join(example_names())}")
    return path.read_text(encoding="utf-8"), str(STORIES_DIR)


def parse_text(text: str, folder: str, paths: PathPolicy) -> Story:
    """The story in ``text``, image paths relative to ``folder``; raises ``StoryError`` listing every problem.

    The text's size is checked first; then ``folder`` and every character image must be allowed by ``paths``.
    """
    text = check_story_text("" if text is None else text)
    try:
        base = paths.resolve(folder or STORIES_DIR, what="story folder")
    except PathNotAllowedError as exc:
        raise StoryError(str(exc)) from None
    return parse_story(text, base_dir=base, paths=paths)


def problems_markdown(error: StoryError) -> str:
    lines = [f"- **line {line}**: {message}" if line is not None else f"- {message}"
             for line, message in error.problems]
    count = len(error.problems)
    return f"**{count} problem{'s' * (count != 1)}:**\n" + "\n".join(lines)


def story_summary(story: Story, render_dir: Path) -> str:
    title = story.title or "Untitled story"
    pages = len(plan_pages(story))
    shown = f" (the preview shows the first {PREVIEW_PAGES})" if pages > PREVIEW_PAGES else ""
    if story.layout == WEBTOON:
        where = (f"layout `webtoon`, {story.webtoon_width} px wide in slices of at most {story.webtoon_slice} px "
                 "(the strip scrolls under Pages)")
    else:
        where = f"layout `{story.layout}` on {story.page}, {pages} page{'s' * (pages != 1)}{shown}"
    reading = "" if story.reading == "left-to-right" else ", read right to left"
    reading += "" if story.bubbles == "horizontal" else ", vertical bubbles"
    summary = (f"**{title}**: {counted(len(story.panels), 'panel')}, {counted(len(story.characters), 'character')}, "
               f"{story.width}x{story.height}, {story.steps} steps, {where}{reading}. Renders go to `{render_dir}`.")
    warnings = missing_glyph_warnings(story)
    return summary + "".join(f"\n- **warning** {html.escape(w, quote=False)}" for w in warnings)


def render_dir_for(ctx: StudioContext, story: Story, request) -> Path:
    """``OUTPUT_DIR/stories/<title slug>``: the same story renders (and resumes) in the same folder.

    On an exposed studio a visitor's renders go to ``stories/visitors/<key>/<title slug>`` (the key from the login
    or the browser session, :meth:`app.context.Access.visitor_key`): nobody overwrites or reads another's render
    by choosing its title. The owner's go to ``stories/`` itself, and the owner sees every folder. ``request`` has
    no default, so that no handler can forget whose render it reads (``None``: the owner on a local studio)."""
    slug = _SLUG.sub("-", (story.title or "untitled").lower()).strip("-")[:60] or "untitled"
    key = ctx.access.visitor_key(request)
    stories = Path(ctx.settings.output_dir) / "stories"
    return stories / slug if key is None else stories / "visitors" / key / slug


def panel_rows(story: Story, render_dir: Path) -> list[list]:
    """One row per panel: number, line, characters, prompt, caption, seed and render status."""
    manifest = load_manifest(render_dir)
    rows = []
    for panel in story.panels:
        record = manifest.panels.get(panel.index)
        if is_panel_done(record, panel_settings_hash(story, panel), render_dir):
            status = "done"
        elif record is not None and record.status == FAILED:
            status = f"failed: {record.error}"
        elif record is not None:
            status = "changed"
        else:
            status = "not rendered"
        who = ", ".join(f"{n}@{panel.regions[n]}" if n in panel.regions else n for n in panel.characters) or "none"
        rows.append([panel.number, panel.line, who, panel.prompt, panel.caption, panel.seed, status])
    return rows


def done_images(story: Story, render_dir: Path, only: set[int] | None = None, max_side: int | None = None) -> dict:
    """The rendered panels whose settings still match the story, by index (stale panels show as placeholders);
    only those in ``only`` when given, shrunk to ``max_side`` when given."""
    manifest = load_manifest(render_dir)
    current = {i for i in range(len(story.panels)) if (only is None or i in only)
               and is_panel_done(manifest.panels.get(i), panel_settings_hash(story, story.panels[i]), render_dir)}
    return load_panel_images(story, render_dir, manifest, only=current, max_side=max_side)


def preview_pages(story: Story, render_dir: Path) -> list:
    """The first PREVIEW_PAGES pages at preview resolution, with the panels rendered so far (shrunk) and grey
    placeholders for the rest: the same small cost on every edit, however many pages the story has."""
    if story.layout == WEBTOON:
        from core.story.export import slice_strip

        return slice_strip(story, webtoon_preview(story, render_dir), [])[0]
    preview = dataclasses.replace(story, dpi=min(story.dpi, PREVIEW_DPI))
    pages = plan_pages(preview)
    shown = pages[:PREVIEW_PAGES]
    wanted = {cell.panel_index for page in shown for cell in page.cells}
    images = done_images(story, render_dir, only=wanted, max_side=PREVIEW_PANEL_SIDE)
    return [compose_page(preview, page, images, total_pages=len(pages)) for page in shown]


def webtoon_preview(story: Story, render_dir: Path):
    """A webtoon's whole strip at its own width (its text at the story's dpi), with the panels rendered so far."""
    page = plan_pages(story)[0]
    images = done_images(story, render_dir, max_side=max(story.webtoon_width, PREVIEW_PANEL_SIDE))
    return compose_page(story, page, images, total_pages=1)


STRIP_VIEW_HEIGHT = 620  # px of the page the strip preview scrolls in


def strip_html(story: Story | None, render_dir: Path | None) -> str:
    """The webtoon strip as readers see it: one column, scrolled; empty for other layouts."""
    if story is None or story.layout != WEBTOON:
        return ""
    strip = webtoon_preview(story, render_dir)
    data = io.BytesIO()
    strip.convert("RGB").save(data, format="JPEG", quality=85)
    source = "data:image/jpeg;base64," + base64.b64encode(data.getvalue()).decode()
    return (f'<div id="story-strip-scroll" style="max-height:{STRIP_VIEW_HEIGHT}px;overflow-y:auto;'
            f'border:1px solid #8884;border-radius:6px;max-width:{min(story.webtoon_width, 480)}px;margin:auto">'
            f'<img alt="webtoon strip preview" src="{source}" style="width:100%;display:block"></div>')


def panel_gallery(story: Story, render_dir: Path) -> list[tuple[str, str]]:
    manifest = load_manifest(render_dir)
    items = []
    for panel in story.panels:
        record = manifest.panels.get(panel.index)
        path = file_inside(render_dir, record.file) if record is not None else None
        if path is not None and is_panel_done(record, panel_settings_hash(story, panel), render_dir):
            caption = f"Panel {panel.number}" + (f": {panel.caption}" if panel.caption else "")
            items.append((str(path), caption))
    return items


def panel_index(number, count: int) -> int:
    """The 0-based index of the Panel field's ``number`` (1 to ``count``, a whole number); refused otherwise."""
    if (not isinstance(number, (int, float)) or isinstance(number, bool) or not math.isfinite(number)
            or int(number) != number or not 1 <= int(number) <= count):
        shown = short_repr(number) if isinstance(number, (int, float)) else type(number).__name__
        raise StudioInputError(f"panel number must be 1 to {count}, got {shown}")
    return int(number) - 1


def pin_panel_seed(text: str, story: Story, index: int, seed: int) -> str:
    """``text`` with panel ``index``'s seed pinned (the story grammar's own edit, :func:`core.story.parse_text.pin_seed`)."""
    if not story.panels[index].line:
        raise StudioInputError("this story has no line numbers (JSON): edit the panel's seed in the file instead")
    return pin_seed(text, story, index, seed)


def library_character_line(ctx: StudioContext, text: str, name: str, folder: str | None = None) -> str:
    """``text`` with ``character NAME: characters/NAME.png`` (the library's scale and description) added to the
    header, just above the ``---`` line (or at the top when there is none yet). The library's image is copied beside
    the story (``<story folder>/characters/``), so the story keeps working when it moves with its folder."""
    entry = ctx.library.get(name)
    tag = re.sub(r"[^A-Za-z0-9_-]", "", entry.name.replace(" ", "_"))
    if not tag or not tag[0].isalpha():
        tag = f"C{tag}"
    base = ctx.paths.resolve(folder or STORIES_DIR, what="story folder")
    relative = Path(CHARACTERS_DIR) / f"{tag}.png"
    number = 2
    image = entry.image_path.read_bytes()
    while (base / relative).exists() and (base / relative).read_bytes() != image:  # another image of that name
        relative = Path(CHARACTERS_DIR) / f"{tag}-{number}.png"
        number += 1
    write_bytes_atomic(base / relative, image)
    block = [f"character {tag}: {relative.as_posix()}", f"    scale: {entry.scale:g}"]
    description = " ".join(str(entry.description or "").split())  # one line, whatever the library holds
    if description:
        block.append(f"    description: {description}")
    lines = (text or "").splitlines()
    at = next((k for k, line in enumerate(lines) if line.strip() == "---"), None)
    if at is None:
        lines = block + ["---"] + lines
    else:
        lines[at:at] = block
    return "\n".join(lines) + "\n"


def _gpu_duration(story: Story, todo: list[int]) -> int:
    return estimate_duration(story.width, story.height, story.steps, images=max(1, len(todo)),
                             true_cfg=story.true_cfg > 1, characters=len(story.characters))


class StoryEvents:
    """The handlers, bound to one :class:`StudioContext`."""

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        self.runs = SessionRuns(ctx.jobs)
        # ZeroGPU attaches the GPU only inside this function, for its estimated duration
        self._zero_gpu_render = gpu_function(self._render_panels,
                                             duration=lambda story, out, todo, *rest: _gpu_duration(story, todo))
        self.load_example = shown_to_user(self._load_example)
        self.parse = shown_to_user(self._parse)
        self.strip = shown_to_user(self._strip)
        self.render = shown_to_user(self._render)
        self.new_seed = shown_to_user(self._new_seed)
        self.cancel = shown_to_user(self._cancel)
        self.add_library_character = shown_to_user(self._add_library_character)

    # ------------------------------------------------------------------ editing
    def _load_example(self, name, request: gr.Request = None):
        text, folder = load_example(name)
        return (text, folder, *self._parse(text, folder, request))

    def _parse(self, text, folder, request: gr.Request = None):
        """``(problems/summary markdown, panel rows, preview pages)`` for the text as it is now (run on every edit:
        an over-long text is refused before it is parsed, and the preview draws only the first pages)."""
        try:
            story = parse_text(text, folder, self.ctx.paths)
        except StoryError as exc:
            return problems_markdown(exc), [], []
        out = render_dir_for(self.ctx, story, request)
        return story_summary(story, out), panel_rows(story, out), preview_pages(story, out)

    def _strip(self, text, folder, request: gr.Request = None):
        """The webtoon strip preview (``strip_html``) of the text as it is now, shown only for a webtoon."""
        try:
            story = parse_text(text, folder, self.ctx.paths)
        except StoryError:
            return gr.update(value="", visible=False)
        html_text = strip_html(story, render_dir_for(self.ctx, story, request))
        return gr.update(value=html_text, visible=bool(html_text))

    def _add_library_character(self, text, name, folder=None):
        if not name:
            raise StudioInputError("choose a character from the library first")
        return library_character_line(self.ctx, text, name, folder)

    # ------------------------------------------------------------------ rendering
    def checked_story(self, text, folder) -> Story:
        """The story parsed as ``_parse`` does (limits and the path policy); ``StudioInputError`` naming the first
        problem otherwise, before any work."""
        try:
            return parse_text(text, folder, self.ctx.paths)
        except StoryError as exc:
            first = exc.problems[0]
            where = f"line {first[0]}: " if first[0] is not None else ""
            more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            raise StudioInputError(f"fix the story first: {where}{first[1]}{more}") from None

    def _render_panels(self, story: Story, out: Path, todo: list[int], resume: bool, report=None, cancel=None):
        """Renders ``todo`` with the studio's engine (loaded once) under the studio's GPU lock; returns
        ``RenderResult``. The panels' PNG records come from the engine (models, dtype and preset included)."""
        from core.story.render import render_story

        report = report or (lambda fraction, message: None)
        finished = 0
        total = max(1, len(todo))

        def on_panel(event):
            nonlocal finished
            panel = story.panels[event.index]
            if event.status == "rendering":
                report(finished / total, f"Panel {panel.number} ({finished + 1} of {len(todo)})")
            else:
                finished += 1
                report(finished / total, f"Panel {panel.number} {event.status}")

        def on_step(index, fraction, message):  # inside a panel: "Panel 3 (2 of 8): step 5/28"
            step = message.rsplit(": ", 1)[-1]
            report((finished + fraction) / total,
                   f"Panel {story.panels[index].number} ({finished + 1} of {len(todo)}): {step}")

        with self.ctx.gpu_lock:
            engine = self.ctx.engine()
            engine.load(report=lambda fraction, message: report(0.0, message))  # a load failure stops the render
            result = render_story(story, engine, out, resume=resume, only=todo, progress=on_panel, cancel=cancel,
                                  step_progress=on_step)
        if result.cancelled:
            raise RenderCancelled
        return result

    def render_and_export(self, story: Story, todo: list[int], resume: bool, request, progress):
        """Renders panels ``todo`` of ``story`` (within the visitor's budget) and exports them: Render's outputs."""
        from core.story.render import RenderResult

        out = render_dir_for(self.ctx, story, request)
        notes = []
        result = RenderResult()
        if todo:
            allowed = self.ctx.access.images_within_budget(request, story.width, story.height, story.steps,
                                                           len(todo), "one panel of this story")
            if allowed < len(todo):
                notes.append(f"Visitors' budget: this Render draws {allowed} of the {len(todo)} panels to do; "
                             "press Render again for the next ones.")
                todo = todo[:allowed]
            if self.ctx.zero_gpu:
                result = self._zero_gpu_render(story, out, todo, resume)
            else:
                session = session_of(request)
                cancel = self.runs.start(session)
                try:
                    if cancel is None:
                        raise RenderCancelled
                    result = self._render_panels(story, out, todo, resume,
                                                 lambda fraction, message: progress(fraction, desc=message), cancel)
                except RenderCancelled:
                    # the queue is freed at once: no export now (the next Render exports), a quick preview instead
                    return ("- Cancelled: the panels finished so far are kept; Render continues from there.",
                            panel_rows(story, out), panel_gallery(story, out),
                            preview_pages(story, out), gr.update(), gr.update())
                finally:
                    self.runs.finish(session, cancel)
        notes += engine_notes(result.notes)
        exported = export_story(story, out, load_manifest(out))
        notes.insert(0, f"Rendered {len(result.rendered)} panel(s); {len(story.panels) - len(todo)} were already "
                        f"done. Pages, PDF, CBZ (comic readers) and ZIP are in `{out}`.")
        for index, error in sorted(result.failed.items()):
            notes.append(f"Panel {index + 1} failed: {error}")
        if exported.missing_panels:
            notes.append(f"Not rendered yet: panel(s) {', '.join(str(i + 1) for i in exported.missing_panels)} "
                         "(grey placeholders on the pages).")
        return (
            "\n".join(f"- {n}" for n in notes), panel_rows(story, out), panel_gallery(story, out),
            [str(p) for p in exported.pages], str(exported.pdf), str(exported.zip),
        )

    def _render(self, text, folder, everything, request: gr.Request = None, progress=gr.Progress()):
        """Renders what is missing or changed (every panel with ``everything``), then exports.

        Returns ``(notes markdown, panel rows, panel gallery, page paths, PDF path, ZIP path)``.
        """
        from core.story.settings import panels_to_render

        story = self.checked_story(text, folder)
        out = render_dir_for(self.ctx, story, request)
        todo = ([p.index for p in story.panels] if everything
                else panels_to_render(story, load_manifest(out), out))
        return self.render_and_export(story, todo, True, request, progress)

    def _new_seed(self, text, folder, number, request: gr.Request = None, progress=gr.Progress(), seed=None):
        """Renders panel ``number`` (1-based) again with a new random seed, written into the text as ``seed:``.

        Returns ``(new text, *the outputs of Render)``.
        """
        story = self.checked_story(text, folder)
        index = panel_index(number, len(story.panels))
        seed = random.randint(0, MAX_SEED) if seed is None else int(seed)
        text = pin_panel_seed(text, story, index, seed)
        reseeded = self.checked_story(text, folder)
        if reseeded.panels[index].seed != seed:  # the text edit must say what we render, or the next render undoes it
            raise StudioInputError(f"could not write the seed under panel {number}; add 'seed: {seed}' there yourself")
        return (text, *self.render_and_export(reseeded, [index], True, request, progress))

    def queued(self, request: gr.Request = None):
        """The Render click, before the queue: a Cancel from now on drops the render if it is still waiting."""
        self.runs.queued(session_of(request))

    def _cancel(self, request: gr.Request = None):
        """The Cancel button: the panel being drawn stops at its next step; "Cancelling..." until it has."""
        return cancelling_button(self.runs.cancel(session_of(request)))

    def wait_until_stopped(self, request: gr.Request = None):
        self.runs.wait(session_of(request))
        return cancel_button()
