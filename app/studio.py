"""The studio: builds the Gradio page from the tab modules and launches it.

``instantcharacter-studio`` with no command calls :func:`launch`; its options are
:func:`app.arguments.add_launch_arguments` (there, so ``--help`` imports no gradio). The Story and Trainer tabs plug
in as ``app/tabs/story.py`` and ``app/tabs/train.py`` exposing ``build(ctx)``; the Trainer tab is left out on
ZeroGPU, where training cannot run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import ipaddress
import logging
import sys

import gradio as gr

from . import visitor_limits
from .context import NO_GPU_NOTICE, Access, StudioContext, StudioSettings
from .visitor_limits import VisitorLimits
from .mask_canvas import CANVAS_JS
from .tabs import generate, history, library, settings
from core.errors import UsageError

log = logging.getLogger(__name__)

MAX_UPLOAD = "50mb"  # the largest character image core.io.images accepts
QUEUE_SIZE = 64
TITLE = "InstantCharacter Studio"
# Optional tabs written as their own modules: (module under app.tabs, tab label, shown on ZeroGPU)
PLUGIN_TABS = (("story", "Story", True), ("train", "Trainer", False))


def _plugin(name: str):
    """``app.tabs.<name>`` when that module exists (its import errors are real errors, not hidden)."""
    if importlib.util.find_spec(f"{__package__}.tabs.{name}") is None:
        return None
    return importlib.import_module(f"{__package__}.tabs.{name}")


def build_studio(ctx: StudioContext) -> gr.Blocks:
    """The whole page for ``ctx``; the tabs' components are reachable as ``demo.studio_tabs[name]``."""
    # analytics off: a local studio should not report usage to anyone
    with gr.Blocks(title=TITLE, fill_width=True, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nPut your characters into new images with FLUX.1 and InstantCharacter.")
        if not ctx.has_cuda and not ctx.settings.is_tiny:
            gr.Markdown(f"> **{NO_GPU_NOTICE}**", elem_id="no-gpu-notice")
        elif ctx.settings.is_tiny:
            gr.Markdown("> Running on **tiny test models**: the interface works end to end, the images are noise.")
        tabs: dict = {}
        with gr.Tabs() as demo.studio_tab_bar:
            with gr.Tab("Generate", id="generate"):
                tabs["generate"] = generate.build(ctx)
            for name, label, on_zero_gpu in PLUGIN_TABS:
                module = _plugin(name)
                if module is None or (ctx.zero_gpu and not on_zero_gpu):
                    continue
                with gr.Tab(label, id=name):
                    tabs[name] = module.build(ctx)
            with gr.Tab("Library", id="library") as library_tab:
                tabs["library"] = library.build(ctx)
            with gr.Tab("History", id="history") as history_tab:
                tabs["history"] = history.build(ctx)
            with gr.Tab("Settings", id="settings"):
                tabs["settings"] = settings.build(ctx)
        _link_tabs(demo, tabs, library_tab, history_tab)
        demo.load(None, None, None, js=CANVAS_JS, api_visibility="private")  # named mask layers (mask_canvas)
    demo.studio_tabs = tabs
    # no size limit on Gradio's queue: visitors are limited per session and address (app.visitor_limits), so
    # their load never refuses the owner's jobs
    demo.queue(default_concurrency_limit=4, max_size=None if ctx.access.exposed else QUEUE_SIZE)
    visitor_limits.install(demo, ctx.access)
    return demo


def _link_tabs(demo, tabs, library_tab, history_tab) -> None:
    gen, hist, lib = tabs["generate"], tabs["history"], tabs["library"]
    library_tab.select(lib.refresh, None, lib.gallery, api_visibility="private")
    history_tab.select(hist.events.gallery, None, hist.gallery, api_visibility="private")
    hist.recall.click(gen.recall_event_handler, hist.selected, generate.recall_outputs(gen) + [gen.mask_specs],
                      api_visibility="private").success(lambda: gr.Tabs(selected="generate"), None,
                                                        demo.studio_tab_bar, api_visibility="private")
    hist.recall.click(gen.edit_events.recall_edit, hist.selected, [gen.edit.canvas, gen.edit.strength],
                      api_visibility="private")  # an edit PNG: its source, region and strength too
    hist.edit.click(gen.edit_events.edit_this, hist.selected, [gen.edit.canvas, gen.width, gen.height, gen.size_preset],
                    api_visibility="private").success(lambda: (gr.Tabs(selected="generate"), gr.Accordion(open=True)),
                                                      None, [demo.studio_tab_bar, gen.edit.accordion],
                                                      api_visibility="private").then(
        gen.edit_events.routing_on_image, [gen.canvas, gen.edit.canvas, gen.width, gen.height], gen.canvas,
        api_visibility="private")


# ---------------------------------------------------------------------------------------------------- launching
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(value: str | None, flag: str = "--auth") -> tuple[str, str] | None:
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise UsageError(f"{flag} must be USER:PASS with both parts non-empty")
    return user, password


def logins(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """Gradio's ``auth``: the owner (``--auth``) first, then the ``--guest`` logins; ``None`` for no login."""
    owner = parse_auth(getattr(args, "auth", None))
    guests = [parse_auth(g, "--guest") for g in getattr(args, "guest", None) or []]
    if owner is not None and any(user == owner[0] for user, _ in guests):
        raise UsageError(f"--guest {owner[0]} is the owner's name: give guests other names")
    everyone = ([owner] if owner is not None else []) + guests
    return everyone or None


def access_for(args: argparse.Namespace) -> Access:
    """Who is the owner: everyone on a loopback-only studio; on an exposed one, only the ``--auth`` login."""
    from .spaces import on_spaces

    reasons = []
    if getattr(args, "share", False):
        reasons.append("shared with a public link")
    if not is_loopback(getattr(args, "host", "127.0.0.1")):
        reasons.append(f"open to the network ({args.host})")
    if on_spaces():
        reasons.append("a Hugging Face Space")
    if getattr(args, "guest", None):
        reasons.append("open to --guest logins")
    owner = parse_auth(getattr(args, "auth", None))
    return Access(exposed=bool(reasons), owner=owner[0] if owner else None, why=" and ".join(reasons),
                  space=on_spaces(), limits=limits_from_args(args))


def limits_from_args(args: argparse.Namespace) -> VisitorLimits:
    """The ``--visitor-*`` flags (``app.arguments.add_visitor_arguments``), checked."""
    values = dict(jobs_per_session=getattr(args, "visitor_jobs_per_session", 2),
                  jobs_per_address=getattr(args, "visitor_jobs_per_address", 4),
                  budget=getattr(args, "visitor_budget", 120.0))
    for name, value in values.items():
        if value is None or value < 0:
            raise UsageError(f"--visitor-{name.replace('_', '-')} must be 0 or more, got {value}")
    return VisitorLimits(**values, downloads=bool(getattr(args, "allow_visitor_downloads", False)))


VISITOR_RIGHTS = ("visitors can generate, write stories, use the library and history, and download what the "
                  "studio made; they cannot read or write files outside its folders, change models, presets or "
                  "the output folder, or train")


def exposure_warnings(host: str, share: bool, auth, guests=()) -> list[str]:
    """Warnings for settings that let other people reach the studio, saying what they can and cannot do."""
    warnings = []
    if guests and not auth:
        warnings.append("--guest without --auth: every login is a visitor, so nobody can change settings, "
                        "unload models or train from the page (add --auth USER:PASS for the owner)")
    if share:
        warnings.append("--share makes the studio reachable by anyone with the gradio.live link"
                        + ("" if auth else " (no login: consider --auth USER:PASS)"))
    if not is_loopback(host):
        warnings.append(f"--host {host} opens the studio to the network"
                        + ("" if auth else " without a login (consider --auth USER:PASS)"))
    if guests and auth and is_loopback(host) and not share:
        warnings.append("--guest logins are visitors even on a loopback --host (a reverse proxy may bring them)")
    if warnings:
        owner = parse_auth(auth) if isinstance(auth, str) else auth
        warnings.append(VISITOR_RIGHTS + "; " + (f"the owner login {owner[0]!r} can do everything" if owner
                                                 else "nobody can change settings or train from the page"))
    return warnings


def launch_kwargs(ctx: StudioContext, args: argparse.Namespace) -> dict:
    """The ``Blocks.launch`` arguments: host, port, login, upload limit and the only folders served."""
    return dict(server_name=args.host, server_port=args.port, share=args.share, auth=logins(args),
                max_file_size=MAX_UPLOAD, allowed_paths=ctx.served_paths(), show_error=False, theme=gr.themes.Soft())


def launch(args: argparse.Namespace, *, block: bool = True):
    """Starts the studio; returns 0 when it stops (``block=False``: returns ``(demo, url)`` at once, for tests)."""
    ctx = StudioContext(StudioSettings(models=args.models, preset=args.preset, output_dir=args.output_dir,
                                       speed=getattr(args, "speed", "off"), base=getattr(args, "base", None),
                                       vae=getattr(args, "vae", None), clip=getattr(args, "clip", None),
                                       t5=getattr(args, "t5", None)),
                        access=access_for(args))
    kwargs = launch_kwargs(ctx, args)
    for warning in exposure_warnings(args.host, args.share, args.auth, getattr(args, "guest", None) or ()):
        print(f"warning: {warning}", file=sys.stderr)
    if not ctx.has_cuda and not ctx.settings.is_tiny:
        print(f"note: {NO_GPU_NOTICE}", file=sys.stderr)
    demo = build_studio(ctx)
    for note in ctx.library.notes + ctx.history.notes:  # damaged user data, skipped and kept aside while building
        print(f"note: {note}", file=sys.stderr)
    # quiet: Gradio's own start-up lines would tell a studio user to "set `share=True` in `launch()`"
    _, url, share_url = demo.launch(prevent_thread_lock=True, quiet=True, **kwargs)
    if not block:
        return demo, url
    for line in launch_messages(url, share_url, args.share):
        print(line, flush=True)
    demo.block_thread()
    return 0


def launch_messages(url: str, share_url: str | None, share: bool) -> list[str]:
    """What the studio says once it listens: where to open it, and how to share it (our option, not Gradio's)."""
    lines = [f"{TITLE} is running at {url} (open it in a browser; Ctrl-C stops it)"]
    if share_url:
        lines.append(f"public link (for about a week): {share_url}")
    elif share:
        lines.append("no public link could be made (no connection to gradio.live?): the studio is local only")
    else:
        lines.append("to share it with a public link, start it with --share (add --auth USER:PASS for a login)")
    return lines


def build_space() -> tuple[gr.Blocks, dict]:
    """The studio as a Hugging Face Space: ``(demo, launch kwargs)``.

    Models come from ``INSTANTCHARACTER_MODELS`` (default: the hub models; ``tiny`` for a CPU demo Space). On
    ZeroGPU the models are loaded at start-up, outside the GPU functions, as ZeroGPU expects.
    """
    import os

    ctx = StudioContext(StudioSettings(models=os.environ.get("INSTANTCHARACTER_MODELS", "default"),
                                       preset=os.environ.get("INSTANTCHARACTER_PRESET", "auto"),
                                       speed=os.environ.get("INSTANTCHARACTER_SPEED", "off")))
    if ctx.zero_gpu and os.environ.get("INSTANTCHARACTER_PRELOAD", "1") != "0":
        ctx.pipeline()
        from .spaces import compile_ahead_of_time

        for line in compile_ahead_of_time(ctx.engine()):  # visitors' GPU seconds are not spent compiling
            print(f"speed: {line}")
    demo = build_studio(ctx)
    # Spaces sets the host and port through GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
    return demo, dict(max_file_size=MAX_UPLOAD, allowed_paths=ctx.served_paths(), show_error=False,
                      theme=gr.themes.Soft())
