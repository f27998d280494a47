"""The ``generate`` command: one image from the command line, with its settings in the PNG."""

from __future__ import annotations

import argparse
import sys
import os
import re
from pathlib import Path

from core.limits import short_repr

from .arguments import add_model_arguments, add_speed_arguments, file_sources, speed_options

# light at import time: `instantcharacter-studio --help` must not load torch; the heavy modules load in `run`
_CHARACTER = re.compile(r"^(?:(?P<name>[^=\[\]]+)=)?(?P<path>.+?)(?::(?P<scale>[0-9]*\.?[0-9]+))?$")
_LORA = re.compile(r"^(?P<source>.+?)(?::(?P<weight>-?[0-9]*\.?[0-9]+))?$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(stops_on_cancel=True)  # Ctrl-C: stop at the next step, exit 130 (app.command)
    parser.add_argument("--prompt", default=None,
                        help="what to draw; name characters with [Name] tags (required unless --recall)")
    parser.add_argument("--recall", default=None, metavar="PNG",
                        help="make an image again from the settings in a PNG made by the studio, the CLI or a "
                             "story (characters, masks, LoRAs, seed...); other flags given override them; prints "
                             "the files it will load")
    parser.add_argument("--trust-recall", action="store_true",
                        help="let --recall load LoRAs and text adapters from outside the PNG's folder (and the "
                             "LoRA folder) as the PNG names them")
    parser.add_argument("--character", action="append", default=[], metavar="[NAME=]PATH[:SCALE]",
                        help="a character image; repeat for several characters")
    parser.add_argument("--scale", type=float, default=0.9, help="default character strength (0 to 2)")
    parser.add_argument("--lora", action="append", default=[], metavar="SOURCE[:WEIGHT]",
                        help="a style LoRA: a .safetensors file, owner/repo or owner/repo/file.safetensors, with "
                             "an optional weight (default 1); repeat for up to 3")
    parser.add_argument("--mask", action="append", default=[], metavar="NAME=SPEC",
                        help="where a character goes: an image file, left/right/top/bottom, left-third, "
                             "center-third, right-third, grid:RxC:N or box:x0,y0,x1,y1")
    parser.add_argument("--description", action="append", default=[], metavar="NAME=TEXT",
                        help="the words that replace [NAME] in the prompt (what that character is, in words)")
    regional = parser.add_argument_group("regional text (each character's words act in its region only)")
    regional.add_argument("--regional-text", choices=("auto", "on", "off"), default=None,
                          help="auto (default): on for two or more characters with masks and words of their own")
    regional.add_argument("--regional-steps", type=float, default=None, metavar="FRACTION",
                          help="fraction of the steps that use it, from the first (default 0.4)")
    regional.add_argument("--regional-blocks", choices=("all", "double", "single", "alternate"), default=None,
                          help="attention layers that use it (default all)")
    regional.add_argument("--regional-base-ratio", type=float, default=None, metavar="RATIO",
                          help="blend of an unmasked pass into the image tokens, 0 to 1 (default 0; costs a pass)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--true-cfg", type=float, default=None, help="true CFG scale (1 = off; default 1)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 28)")
    parser.add_argument("--guidance", type=float, default=None, help="distilled guidance (default 3.5)")
    parser.add_argument("--width", type=int, default=None, help="multiple of 16 (default 1024)")
    parser.add_argument("--height", type=int, default=None, help="multiple of 16 (default 1024)")
    parser.add_argument("--seed", type=int, default=None, help="random when omitted; recorded in the PNG")
    add_model_arguments(parser, files=True, adapter=True)
    parser.add_argument("--text-adapter", default=None, help="a trained text adapter (.safetensors)")
    parser.add_argument("--out", required=True, help="output PNG path")
    edit = parser.add_argument_group("editing an image (image-to-image and inpainting)")
    edit.add_argument("--image", default=None, metavar="PATH",
                      help="start from this image instead of noise; the output size defaults to its own "
                           "(rounded to multiples of 16); saved beside the output as source-<digest>.png")
    edit.add_argument("--strength", type=float, default=None,
                      help="with --image: how much to change, 0 (keep it) to 1 (ignore it); default 0.6")
    edit.add_argument("--inpaint-mask", default=None, metavar="PATH",
                      help="with --image: redo only the white (or opaque) part of this mask image (or a region "
                           "such as left or box:x0,y0,x1,y1); characters without --mask act there; pixels beyond "
                           "a small feathered edge stay the source's")
    control = parser.add_argument_group("control (pose, depth, edges: a ControlNet, loaded on first use)")
    control.add_argument("--control", action="append", default=[], metavar="KIND:FILE[:SCALE]",
                         help="a ready control image: KIND is pose, depth, canny, soft-edge or gray; SCALE 0 to 2 "
                              "(default 0.7; 0.3-0.8 usually); repeat for several; saved beside the output")
    control.add_argument("--control-from-photo", action="append", default=[], metavar="KIND:FILE[:SCALE]",
                         help="make the control image from a photo or drawing first (pose: ViTPose, depth: Depth "
                              "Anything, canny/soft-edge/gray: image filters)")
    control.add_argument("--controlnet", default=None, metavar="SOURCE",
                         help="the ControlNet: a hub id, diffusers folder or .safetensors file (default: a models "
                              "directory's controlnet/, else Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro-2.0)")
    add_speed_arguments(parser)


def parse_controls(specs: list[str], from_photo: list[str], models: str = "default") -> tuple[list, list[str]]:
    """``--control`` and ``--control-from-photo`` values as control images (photos preprocessed); returns
    ``(controls, notes)``."""
    from core.conditioning.control import load_control, parse_control_spec

    controls, notes = [], []
    for spec in specs:
        kind, path, scale = parse_control_spec(spec, "--control")
        controls.append(load_control(path, kind, scale, name=f"--control {path}"))
    for spec in from_photo:
        from core.conditioning.preprocessors import make_control

        kind, path, scale = parse_control_spec(spec, "--control-from-photo")
        control, made = make_control(load_control(path, "gray", name=f"--control-from-photo {path}").image, kind,
                                     scale, models=models)
        controls.append(control)
        notes += made
    return controls, notes


def parse_characters(specs: list[str], masks: list[str], default_scale: float, characters=None) -> list:
    """Builds characters from ``[NAME=]PATH[:SCALE]`` and ``NAME=SPEC`` strings (masks may also name the
    ``characters`` given, such as those of a recalled PNG)."""
    from core.conditioning.character import Character, CharacterError
    from core.io.images import ImageInputError, open_image
    from core.conditioning.masks import MaskError, RoutingMask

    characters = list(characters or [])
    for spec in specs:
        m = _CHARACTER.match(spec)
        if not m:
            raise CharacterError(f"--character {spec!r}: use [NAME=]PATH[:SCALE]")
        scale = float(m.group("scale")) if m.group("scale") else default_scale
        characters.append(Character(m.group("path"), name=m.group("name"), scale=scale))
    by_name = {c.name.lower(): c for c in characters if c.name}
    if len(masks) > len(characters):
        raise MaskError(f"{len(masks)} masks given for {len(characters)} characters")
    for spec in masks:
        name, sep, value = spec.partition("=")
        if not sep:
            if len(characters) != 1:
                raise MaskError(f"--mask {spec!r}: use NAME=SPEC when there are several characters")
            target, value = characters[0], name
        elif name.strip().lower() in by_name:
            target = by_name[name.strip().lower()]
        else:
            raise MaskError(f"--mask {spec!r}: no character is named {name!r}")
        value = value.strip()
        if Path(value).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
            image = open_image(value, f"mask file {value}")  # header checked: not decoded yet
            try:
                target.mask = RoutingMask.from_spec(image)
            except MaskError as exc:
                raise ImageInputError(f"mask file {value}: {exc}") from None
        else:
            target.mask = RoutingMask.from_spec(value)
    return characters


def check_output(path: str) -> Path:
    """The file ``--out`` will write (a link's target), refused now if it is a folder, a device or a pipe, or if
    its folder cannot be made: before minutes of model loading, not after the image is made."""
    from core.io.paths import OutputPathError, output_target

    target = output_target(path)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{path} cannot be written: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path} cannot be written: no permission to write in {folder}")
    return target


def apply_descriptions(characters: list, specs: list[str]) -> list:
    """The characters with ``--description NAME=TEXT`` values as their words (checked as a Character checks them)."""
    from dataclasses import replace

    from core.conditioning.character import CharacterError

    by_name = {c.name.lower(): i for i, c in enumerate(characters) if c.name}
    characters = list(characters)
    for spec in specs:
        name, sep, text = spec.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise CharacterError(f"--description {short_repr(spec)}: use NAME=TEXT")
        if name.strip().lower() not in by_name:
            raise CharacterError(f"--description {short_repr(spec)}: no character is named {name.strip()!r}")
        i = by_name[name.strip().lower()]
        characters[i] = replace(characters[i], description=" ".join(text.split()))
    return characters


def regional_settings(args: argparse.Namespace, current):
    """The request's :class:`~core.conditioning.regional_text.RegionalText` with the ``--regional-*`` flags given
    on top of ``current`` (a recalled PNG's, or the default)."""
    from core.conditioning.regional_text import RegionalText

    given = {"mode": getattr(args, "regional_text", None), "steps": getattr(args, "regional_steps", None),
             "blocks": getattr(args, "regional_blocks", None), "base_ratio": getattr(args, "regional_base_ratio", None)}
    given = {k: v for k, v in given.items() if v is not None}
    return RegionalText.parse({**RegionalText.parse(current).to_json(), **given}) if given else current


def parse_loras(specs: list[str]) -> list:
    """``--lora SOURCE[:WEIGHT]`` values as style LoRAs (checked: files exist, weights in range)."""
    from core.loading.loras import parse_rows

    rows = []
    for spec in specs:
        match = _LORA.match(spec.strip())
        source, weight = match.group("source"), match.group("weight")
        if weight is not None and Path(spec).is_file():  # a file name that ends in :digits
            source, weight = spec, None
        rows.append([source, float(weight) if weight is not None else 1.0, ""])
    return parse_rows(rows)


def build_request(args: argparse.Namespace):
    """The :class:`GenerationRequest` the flags describe, on top of ``--recall``'s PNG when given: the flags given
    are gathered first, then the request is built once (and checked) as the studio builds its own."""
    from dataclasses import replace

    from core.request import GenerationRequest, request_from_png
    from core.errors import UsageError

    if args.recall:
        check_recalled_files(args.recall, getattr(args, "trust_recall", False))
        recalled = request_from_png(args.recall)
    elif not args.prompt:
        raise UsageError("--prompt is required (or give --recall PNG to make an image again from its settings)")
    else:
        recalled = None
    given = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "true_cfg_scale": args.true_cfg,
             "steps": args.steps, "guidance": args.guidance, "width": args.width, "height": args.height,
             "seed": args.seed, "text_adapter": args.text_adapter}
    fields = {name: value for name, value in given.items() if value is not None}
    characters = recalled.characters if recalled is not None else []
    if args.character:
        fields["characters"] = characters = parse_characters(args.character, args.mask, args.scale)
    elif args.mask:
        fields["characters"] = characters = parse_characters([], args.mask, args.scale, characters=characters)
    if getattr(args, "description", None):
        fields["characters"] = apply_descriptions(characters, args.description)
    fields["regional_text"] = regional_settings(args, recalled.regional_text if recalled is not None else "auto")
    if args.lora:
        fields["loras"] = parse_loras(args.lora)
    if getattr(args, "draft", False):
        fields["draft"] = True
    edit, notes = _edit_fields(args, recalled)
    fields.update(edit)
    for note in notes:
        print(f"note: {note}")
    if getattr(args, "control", None) or getattr(args, "control_from_photo", None):
        fields["controls"], notes = parse_controls(args.control, args.control_from_photo,
                                                   getattr(args, "models", ""))
        for note in notes:
            print(f"note: {note}")
    return replace(recalled, **fields) if recalled is not None else GenerationRequest(**fields)


def recalled_files(png: str) -> list[tuple[str, str, bool]]:
    """``(what, source, trusted)`` for each file a PNG's record makes ``--recall`` load besides the PNG itself:
    trusted when it is inside the PNG's folder or the user's LoRA folder (a hub LoRA: from the hub cache, or
    downloaded)."""
    from core.io.hub_ids import HubId
    from core.io.metadata import read_record
    from core.io.paths import data_dir
    from core.loading.loras import locate

    record = read_record(png)
    folders = [Path(png).expanduser().resolve().parent, data_dir("loras").resolve()]

    def trusted(path: Path) -> bool:
        return any(path == f or path.is_relative_to(f) for f in folders)

    files = []
    for lora in record.loras:
        source = str(lora.get("source", ""))
        located = locate(source) if source else None
        if isinstance(located, HubId):
            files.append(("hub LoRA", source, True))
        elif located is not None:
            files.append(("LoRA", str(located), trusted(located)))
    adapter = (record.models or {}).get("text_adapter")
    if adapter:
        path = Path(str(adapter)).expanduser().resolve()
        files.append(("text adapter", str(path), trusted(path)))
    return files


def check_recalled_files(png: str, trust: bool) -> None:
    """Prints what ``--recall PNG`` will load; a :class:`UsageError` for a file outside the PNG's folder unless
    ``trust`` (``--trust-recall``)."""
    from core.errors import UsageError

    for what, source, inside in recalled_files(png):
        print(f"recall: loads the {what} {source}" + ("" if inside else " (outside the PNG's folder)"))
        if not inside and not trust:
            raise UsageError(f"--recall {png} names the {what} {source}, outside the PNG's folder: check it, "
                             "then add --trust-recall to load it")


def _edit_fields(args: argparse.Namespace, recalled) -> tuple[dict, list[str]]:
    """The request fields of ``--image``, ``--strength`` and ``--inpaint-mask`` (on top of a recalled edit), and
    notes for the user."""
    from core.conditioning.edit import check_strength, load_region, load_source, output_size
    from core.errors import UsageError

    image, strength, mask = getattr(args, "image", None), getattr(args, "strength", None), getattr(
        args, "inpaint_mask", None)
    source = recalled.source_image if recalled is not None else None
    if image is None and source is None and (strength is not None or mask is not None):
        raise UsageError(f"{'--strength' if strength is not None else '--inpaint-mask'} needs --image PATH "
                         "(the image to edit)")
    fields, notes = {}, []
    if image is not None:
        fields["source_image"] = source = load_source(image, f"--image {image}")
        fields["inpaint_region"] = None
        if args.width is None and args.height is None:
            fields["width"], fields["height"] = output_size(source)
    if strength is not None:
        fields["strength"] = check_strength(strength, "--strength")
    if mask is not None:
        fields["inpaint_region"], notes = load_region(mask, source.size, f"--inpaint-mask {mask}")
    return fields, notes


def run(args: argparse.Namespace) -> int:
    from core.engine import Engine
    from core.limits import MAX_PROMPT_CHARS, check_seed, check_text
    from core.io.metadata import save_png
    from core.loading.sources import ModelSources

    # fail fast, before minutes of model loading
    check_output(args.out)
    if args.seed is not None:
        check_seed(args.seed, "--seed")
    check_text(args.prompt, "--prompt", MAX_PROMPT_CHARS)
    check_text(args.negative_prompt, "--negative-prompt", MAX_PROMPT_CHARS)
    request = build_request(args).with_seed()
    sources = file_sources(args)
    for note in sources.notes if sources is not None else ():
        print(f"models: {note}")
    if getattr(args, "controlnet", None):
        sources = (sources or ModelSources.parse(args.models)).override(controlnet=args.controlnet)
    engine = Engine(args.models, preset=args.preset, dtype=args.dtype, progress_bars=True, sources=sources,
                    width=request.width, height=request.height, speed=speed_options(args))
    print(f"memory preset: {engine.preset.name} ({engine.preset_reason})")
    if not engine.speed.off:
        print(f"speed mode {engine.speed.name}" + (": the first image of a size compiles the transformer first"
                                                   if engine.speed.compile else ""))
    result = engine.generate(request, cancel=getattr(args, "cancel", None))  # Ctrl-C: stop at the next step
    for line in engine.speed_steps:
        print(f"speed: {line}")
    if result.cancelled:
        print("stopped: nothing was saved", file=sys.stderr)
        return 130
    for note in result.notes:
        print(f"note: {note}")
    path = save_png(result.images[0], args.out, result.records[0], source=request.source_image,
                    controls=request.controls)
    print(f"saved {path} (seed {result.seeds[0]})")
    return 0

