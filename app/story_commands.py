"""The ``story`` commands: render a story file to panels, pages, a PDF and a ZIP; check it; save it as JSON.

``instantcharacter-studio story render STORY --out DIR`` loads the engine once and renders every panel that still
needs it (see ``core/story/FORMAT.md``), then exports. Launched with ``torchrun`` or ``accelerate launch``
(``WORLD_SIZE`` > 1), each process loads the engine and takes its share of the panels; rank 0 exports::

    torchrun --nproc_per_node 2 -m app.story_commands render STORY --out DIR

A story with problems prints one ``FILE:LINE: message`` line per problem and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.arguments import add_model_arguments, add_speed_arguments, file_sources, speed_options
from app.command import run_handler
from app.wording import counted
from core.limits import (MAX_DPI, MAX_PANELS, MAX_SEED, MAX_STEPS, MIN_DPI, LimitError, check_int, check_size,
                         read_size, short_repr)

if TYPE_CHECKING:  # the story modules import PIL: imported when a command runs, not for --help
    from core.story.model import Story, StoryError
_RANGE = re.compile(r"^(\d{1,12})(?:-(\d{1,12}))?$")


# --------------------------------------------------------------------------------------------------- arguments
def _size(text: str) -> tuple[int, int]:
    try:
        width, height = read_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        return check_size(width, height)
    except LimitError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _whole(text: str, name: str, low: int, high: int) -> int:
    """A whole-number option checked by :func:`core.limits.check_int` (its message, as argparse's error)."""
    if not re.fullmatch(r"\s*-?\d{1,12}\s*", text):
        raise argparse.ArgumentTypeError(f"{short_repr(text)}: expected a whole number from {low} to {high}")
    try:
        return check_int(int(text), name, low, high)
    except LimitError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _steps(text: str) -> int:
    return _whole(text, "steps", 1, MAX_STEPS)


def _dpi(text: str) -> int:
    return _whole(text, "dpi", MIN_DPI, MAX_DPI)


def parse_panel_list(text: str) -> list[int]:
    """``"2,5-7"`` -> ``[1, 4, 5, 6]``: 1-based panel numbers and ranges, as 0-based indices.

    Every number is checked against MAX_PANELS before any range is expanded.
    """
    bounds: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _RANGE.match(part)
        if not match:
            raise argparse.ArgumentTypeError(f"{short_repr(part)}: expected panel numbers such as 2,5-7")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if first < 1 or last < first:
            raise argparse.ArgumentTypeError(f"{part!r}: panel numbers start at 1 and ranges go upwards")
        if last > MAX_PANELS:
            raise argparse.ArgumentTypeError(f"{part!r}: panel numbers go up to {MAX_PANELS} (a story has at most "
                                             f"{MAX_PANELS} panels), got {last}")
        bounds.append((first, last))
    if not bounds:
        raise argparse.ArgumentTypeError("no panel numbers given")
    indices: set[int] = set()
    for first, last in bounds:
        indices.update(range(first - 1, last))
    return sorted(indices)


def add_story_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``render``, ``check`` and ``to-json`` under ``parser`` (the ``story`` command's parser)."""
    commands = parser.add_subparsers(dest="story_command", metavar="STORY_COMMAND")
    commands.required = True

    render = commands.add_parser(
        "render", help="render every panel, then write page PNGs, a PDF and a ZIP",
        description="Render a story (text or JSON) into --out: panels/, pages/, story.pdf, story.zip and "
                    "manifest.json. Re-running with --resume renders only what is missing or changed.")
    render.add_argument("story", help="the story file (.story text or .json)")
    render.set_defaults(stops_on_cancel=True)  # Ctrl-C: stop at the next step, exit 130 (app.command)
    render.add_argument("--out", required=True, help="the render folder (created if needed)")
    add_model_arguments(render, files=True, adapter=True)
    render.add_argument("--resume", action="store_true",
                        help="keep panels already rendered with the same settings; render the rest")
    render.add_argument("--panels", type=parse_panel_list, default=None, metavar="LIST",
                        help="render only these panels (1-based: 3 or 2,5-7), done or not; keeps the others")
    render.add_argument("--size", type=_size, default=None, metavar="WxH",
                        help="override the story's image size (e.g. a quick draft at 512x384)")
    render.add_argument("--steps", type=_steps, default=None,
                        help=f"override the story's sampling steps (1 to {MAX_STEPS})")
    render.add_argument("--dpi", type=_dpi, default=None,
                        help=f"override the story's page resolution ({MIN_DPI} to {MAX_DPI})")
    render.add_argument("--no-export", action="store_true", help="render panels only; no pages, PDF or ZIP")
    add_speed_arguments(render, draft=False)

    edit = commands.add_parser(
        "edit", help="edit a rendered panel (image-to-image or inpainting), recorded in the manifest",
        description="Redo a rendered panel from its current image: all of it at --strength, or only a region "
                    "(--inpaint-mask or --region). The edit is recorded in the render folder's manifest: "
                    "`story render --resume` keeps it and a full `story render` makes it again.")
    edit.add_argument("story", help="the story file (.story text or .json)")
    edit.add_argument("--out", required=True, help="the render folder the panel was rendered into")
    edit.add_argument("--panel", type=lambda t: _whole(t, "panel", 1, MAX_PANELS), required=True,
                      help="the panel to edit (1-based)")
    edit.add_argument("--strength", type=float, default=0.6, help="0 (keep it) to 1 (ignore it); default 0.6")
    where = edit.add_mutually_exclusive_group()
    where.add_argument("--inpaint-mask", default=None, metavar="PATH",
                       help="redo only the white part of this mask image (the panel's characters act there)")
    where.add_argument("--region", default=None, metavar="SPEC",
                       help="redo only this region: left, right, top, bottom, grid:RxC:N or box:x0,y0,x1,y1")
    edit.add_argument("--seed", type=lambda t: _whole(t, "seed", 0, MAX_SEED), default=None,
                      help="the edit's seed (default: the panel's)")
    edit.add_argument("--undo", action="store_true", help="drop the panel's edit and render it from its settings")
    add_model_arguments(edit, files=True, adapter=True)  # the same models as `story render` took
    edit.add_argument("--size", type=_size, default=None, metavar="WxH", help="as given to story render")
    edit.add_argument("--steps", type=_steps, default=None, help="as given to story render")
    edit.add_argument("--no-export", action="store_true", help="edit the panel only; no pages, PDF or ZIP")

    check = commands.add_parser("check", help="parse a story and list its panels, or every problem with its line")
    check.add_argument("story", help="the story file (.story text or .json)")

    to_json = commands.add_parser("to-json", help="save a parsed story as JSON (renderable directly)")
    to_json.add_argument("story", help="the story file")
    to_json.add_argument("out", help="the JSON file to write")


def story_main(args: argparse.Namespace) -> int:
    """Runs ``args.story_command``; a story with problems prints them (one line each) and returns 2."""
    from core.story.model import StoryError

    handler = {"render": run_render, "check": run_check, "to-json": run_to_json,
               "edit": run_edit}[args.story_command]
    try:
        return handler(args)
    except StoryError as exc:
        print_story_error(exc, getattr(args, "story", None))
        return 2


def print_story_error(error: StoryError, path: str | os.PathLike | None = None, file=None) -> None:
    """One ``FILE:LINE: message`` line per problem (``FILE: message`` when the problem has no line)."""
    file = file or sys.stderr
    for line in format_problems(error, path):
        print(line, file=file)


def format_problems(error: StoryError, path: str | os.PathLike | None = None) -> list[str]:
    where = error.source or (str(path) if path is not None else "story")
    return [f"{where}:{line}: {message}" if line is not None else f"{where}: {message}"
            for line, message in error.problems]


def with_overrides(story: Story, size: tuple[int, int] | None = None, steps: int | None = None,
                   dpi: int | None = None) -> Story:
    """The story with the command line's size, steps and dpi in place of its header's (None keeps them)."""
    changes: dict[str, Any] = {}
    if size is not None:
        changes["width"], changes["height"] = size
    if steps is not None:
        changes["steps"] = steps
    if dpi is not None:
        changes["dpi"] = dpi
    return dataclasses.replace(story, **changes) if changes else story


# --------------------------------------------------------------------------------------------------- check, json
def describe_story(story: Story) -> list[str]:
    """A short listing: the header in one line, the characters, then one line per panel."""
    from core.story.geometry import plan_pages

    pages = len(plan_pages(story))
    title = f'"{story.title}"' if story.title else "(untitled)"
    if story.layout == "webtoon":
        where = (f"layout webtoon, {story.webtoon_width} px wide in slices of at most {story.webtoon_slice} px, "
                 f"text at {story.dpi} dpi")
    else:
        where = f"layout {story.layout} on {story.page} at {story.dpi} dpi: {pages} page{'s' * (pages != 1)}"
    lines = [f"{title}: {counted(len(story.panels), 'panel')}, {counted(len(story.characters), 'character')}, "
             f"{story.width}x{story.height}, {story.steps} steps, seed {story.seed}, {where}"]
    if story.reading != "left-to-right" or story.bubbles != "horizontal" or story.font is not None:
        lines.append(f"  read {story.reading}, {story.bubbles} bubbles"
                     + (f", font {story.font}" if story.font is not None else ""))
    for c in story.characters.values():
        lines.append(f"  character [{c.name}]: {c.image} (scale {c.scale:g})")
    for p in story.panels:
        who = ", ".join(f"[{n}@{p.regions[n]}]" if n in p.regions else f"[{n}]" for n in p.characters) or "[NC]"
        extras = [f"seed {p.seed}{' (pinned)' if p.seed_pinned else ''}"]
        if p.height:
            extras.append(f"{p.height} px tall")
        if p.dialogue:
            extras.append(f"{len(p.dialogue)} bubble{'s' * (len(p.dialogue) != 1)}")
        where = f"line {p.line}" if p.line else "json"
        lines.append(f"  panel {p.number} ({where}; {who}; {'; '.join(extras)}): {story.engine_prompt(p)}")
        if p.caption:
            lines.append(f"      # {p.caption}")
    return lines


def run_check(args: argparse.Namespace) -> int:
    from core.story.load import load_story

    from core.story.drawing import missing_glyph_warnings

    story = load_story(args.story)
    print("\n".join(describe_story(story)))
    for warning in missing_glyph_warnings(story):
        print(f"warning: {warning}")
    print("ok")
    return 0


def run_to_json(args: argparse.Namespace) -> int:
    from core.story.load import load_story

    story = load_story(args.story)
    path = story.save_json(args.out)
    print(f"wrote {path} ({len(story.panels)} panels)")
    return 0


# --------------------------------------------------------------------------------------------------- rendering
class _OneProcess:
    """What ``render_story`` uses of ``accelerate.PartialState``, for a single process."""

    process_index = 0
    num_processes = 1
    is_main_process = True

    def __init__(self):
        import torch

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def wait_for_everyone(self) -> None:
        pass


def process_state() -> Any:
    """``accelerate.PartialState`` under ``torchrun``/``accelerate launch`` (gloo on CPU), else one process."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState(cpu=not torch.cuda.is_available())
    return _OneProcess()


def load_engine(args: argparse.Namespace, device, width: int = 1024, height: int = 1024, state: Any = None,
                speed=None):
    """The engine (``core.engine.Engine``) of the model flags in ``args`` (``--models``, ``--base``,
    ``--vae``/``--clip``/``--t5``, ``--adapter``, ``--preset``, ``--dtype``, read by :func:`file_sources` as
    ``generate`` reads them), loaded once for a whole story; it records how it was loaded (models, dtype, preset)
    in each panel's PNG. With several processes rank 0 resolves the model sources first (building the tiny bundle
    or filling the hub cache), then the others."""
    import contextlib

    from core.engine import Engine

    first = state.main_process_first() if hasattr(state, "main_process_first") else contextlib.nullcontext()
    with first:
        sources = file_sources(args, always=True)
    engine = Engine(args.models, preset=args.preset, sources=sources, device=device, dtype=args.dtype, width=width,
                    height=height, speed=speed)
    engine.load()
    return engine


def _progress_printer(story: Story, rank: int, world: int):
    from core.story.manifest import panel_filename

    prefix = f"[rank {rank}] " if world > 1 else ""
    started: dict[int, float] = {}

    def report(event) -> None:
        panel = story.panels[event.index]
        if event.status == "rendering":
            started[event.index] = time.perf_counter()
            return
        seconds = time.perf_counter() - started.get(event.index, time.perf_counter())
        head = f"{prefix}[{event.completed}/{event.total}] panel {panel.number}"
        if event.status == "done":
            print(f"{head} done in {seconds:.1f} s (seed {panel.seed}) -> {panel_filename(event.index)}", flush=True)
        else:
            print(f"{head} FAILED: {event.error}", flush=True)

    return report


def run_render(args: argparse.Namespace) -> int:
    """Renders, then (rank 0) exports; 0 when every panel is done, 1 when some failed (the rest are exported)."""
    from core.story.drawing import missing_glyph_warnings
    from core.story.export import export_story
    from core.story.geometry import plan_pages
    from core.story.load import load_story
    from core.story.manifest import load_manifest
    from core.story.model import StoryError
    from core.story.render import render_story
    from core.story.settings import panels_to_render

    started = time.perf_counter()
    story = with_overrides(load_story(args.story), args.size, args.steps, args.dpi)
    try:
        plan_pages(story)  # the pages at the --dpi given: refused now rather than after rendering every panel
    except LimitError as exc:
        raise StoryError(f"--dpi {story.dpi}: {exc}" if args.dpi is not None else str(exc)) from None
    if not story.panels:
        raise StoryError("the story has no panels: write one panel per line after the '---' line")
    for warning in missing_glyph_warnings(story):
        print(f"warning: {warning}", flush=True)
    only = args.panels
    if only is not None and only[-1] >= len(story.panels):
        raise StoryError(f"--panels: the story has {len(story.panels)} panels, got panel {only[-1] + 1}")
    out = Path(args.out)
    state = process_state()
    rank, world = state.process_index, state.num_processes

    # Nothing to render (a finished story resumed): skip loading the models, just export again.
    if only is not None:
        todo = only
    elif args.resume:
        todo = panels_to_render(story, load_manifest(out), out)
    else:
        todo = [p.index for p in story.panels]
    engine = None
    if todo:
        if rank == 0:
            print(f"loading the models ({args.models}) for {len(todo)} of {len(story.panels)} panels"
                  + (f" on {world} processes" if world > 1 else ""), flush=True)
        engine = load_engine(args, state.device, story.width, story.height, state, speed=speed_options(args))
    cancel = getattr(args, "cancel", None)  # set by Ctrl-C (app.command.run_handler)
    if cancel is not None and cancel.is_set():
        return 130
    result = render_story(story, engine, out, resume=args.resume, state=state, only=only,
                          progress=_progress_printer(story, rank, world), cancel=cancel)
    if result.cancelled:
        done = len(result.manifest.done()) if rank == 0 else len(result.rendered)
        print(f"{'[rank %d] ' % rank if world > 1 else ''}stopped: {done} of {len(story.panels)} panels done are "
              f"kept in {out}; run the same command with --resume to continue", flush=True)
        return 130
    for note in result.notes if rank == 0 else ():
        print(f"note: {note}")
    if rank != 0:
        return 0
    manifest = result.manifest
    done, failed = manifest.done(), manifest.failed()
    rendered = len(todo) - len(failed.keys() & set(todo))
    print(f"rendered {rendered} panel{'s' * (rendered != 1)}, kept {len(story.panels) - len(todo)} already done, "
          f"{len(failed)} failed; {len(done)} of {len(story.panels)} panels done "
          f"in {time.perf_counter() - started:.1f} s")
    for index, record in sorted(failed.items()):
        print(f"  panel {index + 1} failed: {record.error}")
    if not args.no_export:
        exported = export_story(story, out, manifest)
        print(f"pages: {len(exported.pages)} in {out / 'pages'}")
        print(f"pdf: {exported.pdf}")
        print(f"zip: {exported.zip}")
        if exported.missing_panels:
            print(f"note: panel{'s' * (len(exported.missing_panels) != 1)} "
                  f"{', '.join(str(i + 1) for i in exported.missing_panels)} not rendered: placeholders on the pages; "
                  "run again with --resume")
    return 1 if failed else 0


def run_edit(args: argparse.Namespace) -> int:
    """``story edit``: records the edit of one rendered panel in the manifest, then renders that panel as it."""
    from core.conditioning.edit import check_strength
    from core.story.edit import prepare_panel_edit
    from core.story.export import export_story
    from core.story.load import load_story
    from core.story.model import StoryError
    from core.story.render import render_story

    story = with_overrides(load_story(args.story), args.size, args.steps)
    if args.panel > len(story.panels):
        raise StoryError(f"--panel {args.panel}: the story has {len(story.panels)} panels")
    index, out = args.panel - 1, Path(args.out)
    if not args.undo:
        check_strength(args.strength, "--strength")
    spec = args.inpaint_mask or args.region
    where = f"--inpaint-mask {spec}" if args.inpaint_mask else f"--region {spec}"
    try:
        notes = prepare_panel_edit(story, out, index, args.strength, spec, args.seed, args.undo, where)
    except StoryError as exc:
        if "render it first" not in str(exc):
            raise
        raise StoryError(f"panel {args.panel} is not rendered in {out} with these settings: run `story render "
                         f"{args.story} --out {out} --resume` first") from None
    for note in notes:
        print(f"note: {note}")
    region = spec
    state = process_state()
    engine = load_engine(args, state.device, story.width, story.height, state)
    result = render_story(story, engine, out, only=[index], state=state)
    for note in result.notes:
        print(f"note: {note}")
    if index in result.failed:
        print(f"panel {args.panel} failed: {result.failed[index]}")
        return 1
    what = "edit undone" if args.undo else f"edited at strength {args.strength:g}" + (" (inpainted)" if
                                                                                     region is not None else "")
    print(f"panel {args.panel} {what}: {out / result.manifest.panels[index].file}")
    if not args.no_export:
        exported = export_story(story, out, result.manifest)
        print(f"pages: {len(exported.pages)} in {out / 'pages'}")
    return 0


# --------------------------------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.story_commands",
                                     description="Story commands (the same as `instantcharacter-studio story`).")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_story_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m app.story_commands``: for ``torchrun``/``accelerate launch``, which start Python modules."""
    args = build_parser().parse_args(argv)
    return run_handler(story_main, args)


if __name__ == "__main__":
    sys.exit(main())
