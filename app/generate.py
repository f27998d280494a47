"""The ``generate`` command: one image from the command line, with its settings in the PNG."""

from __future__ import annotations

import argparse
import os
import random
import re
from pathlib import Path

import torch

from core.character import Character, CharacterError, check_characters
from core.images import ImageInputError, open_image
from core.limits import MAX_PROMPT_CHARS, MAX_SEED, check_seed, check_text
from core.masks import MaskError, RoutingMask
from core.metadata import CharacterRecord, GenerationRecord, save_png
from core.paths import OutputPathError, output_target
from core.pipeline import check_settings
from core.prompt import resolve_prompt
from core.sources import ModelSources

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_CHARACTER = re.compile(r"^(?:(?P<name>[^=\[\]]+)=)?(?P<path>.+?)(?::(?P<scale>[0-9]*\.?[0-9]+))?$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="what to draw; name characters with [Name] tags")
    parser.add_argument("--character", action="append", default=[], metavar="[NAME=]PATH[:SCALE]",
                        help="a character image; repeat for several characters")
    parser.add_argument("--scale", type=float, default=0.9, help="default character strength (0 to 2)")
    parser.add_argument("--mask", action="append", default=[], metavar="NAME=SPEC",
                        help="where a character goes: an image file, left/right/top/bottom, left-third, "
                             "center-third, right-third, grid:RxC:N or box:x0,y0,x1,y1")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--true-cfg", type=float, default=1.0, help="true CFG scale (1 = off)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=None, help="random when omitted; recorded in the PNG")
    parser.add_argument("--models", default="default", help="default, tiny, or a models directory")
    parser.add_argument("--text-adapter", default=None, help="a trained text adapter (.safetensors)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--preset", default="auto", choices=["auto", "full", "balanced", "low", "minimal"],
                        help="memory preset (default: auto picks from the detected GPU and RAM)")
    parser.add_argument("--out", required=True, help="output PNG path")


def parse_characters(specs: list[str], masks: list[str], default_scale: float) -> list[Character]:
    """Builds characters from ``[NAME=]PATH[:SCALE]`` and ``NAME=SPEC`` strings."""
    characters = []
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


def default_dtype() -> str:
    return "bfloat16" if torch.cuda.is_available() else "float32"


def check_output(path: str) -> Path:
    """The file ``--out`` will write (a link's target), refused now if it is a folder, a device or a pipe, or if
    its folder cannot be made: before minutes of model loading, not after the image is made."""
    target = output_target(path)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{path} cannot be written: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path} cannot be written: no permission to write in {folder}")
    return target


def run(args: argparse.Namespace) -> int:
    from core.memory import out_of_memory_advice
    from core.memory_setup import load_pipeline, resolve_preset

    # fail fast, before minutes of model loading
    check_output(args.out)
    if args.seed is not None:
        check_seed(args.seed, "--seed")
    check_text(args.prompt, "--prompt", MAX_PROMPT_CHARS)
    check_text(args.negative_prompt, "--negative-prompt", MAX_PROMPT_CHARS)
    check_settings(args.prompt, args.height, args.width, args.steps, args.guidance, args.true_cfg)
    characters = parse_characters(args.character, args.mask, args.scale)
    check_characters(characters)
    resolve_prompt(args.prompt, characters)
    sources = ModelSources.parse(args.models)
    dtype_name = args.dtype or default_dtype()
    seed = args.seed if args.seed is not None else random.randint(0, MAX_SEED)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset, reason = resolve_preset(args.preset, tiny=args.models == "tiny", device=device, width=args.width,
                                    height=args.height)
    print(f"memory preset: {preset.name} ({reason})")
    pipe, _ = load_pipeline(sources, preset, device, DTYPES[dtype_name], text_adapter=args.text_adapter,
                            progress=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    with out_of_memory_advice(preset, width=args.width, height=args.height):
        result = pipe(args.prompt, characters=characters, negative_prompt=args.negative_prompt,
                      true_cfg_scale=args.true_cfg, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      height=args.height, width=args.width, generator=generator)
    for note in result.notes:
        print(f"note: {note}")
    record = GenerationRecord(
        prompt=args.prompt, seed=seed, width=args.width, height=args.height, num_inference_steps=args.steps,
        guidance_scale=args.guidance, negative_prompt=args.negative_prompt, true_cfg_scale=args.true_cfg,
        characters=[CharacterRecord.from_character(c) for c in characters],
        models={"base": sources.base, "siglip": sources.siglip, "dinov2": sources.dinov2, "adapter": sources.adapter,
                "text_adapter": args.text_adapter, "spec": args.models},
        dtype=dtype_name, preset=preset.name,
    )
    path = save_png(result.images[0], args.out, record)
    print(f"saved {path} (seed {seed})")
    return 0
