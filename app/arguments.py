"""The studio's options and the choices commands share, defined where nothing heavy is imported.

``instantcharacter-studio --help`` answers from these without importing gradio, torch or diffusers (seconds each);
``app.studio.launch`` imports them when it runs.
"""

from __future__ import annotations

import argparse

from core.loading.memory import PRESET_ORDER

PRESET_CHOICES = ("auto",) + PRESET_ORDER
DTYPE_CHOICES = ("bfloat16", "float16", "float32")
SPEED_CHOICES = ("off", "full", "fast")  # core.loading.speed.SPEED_MODES


def add_speed_arguments(parser: argparse.ArgumentParser, draft: bool = True) -> None:
    """``--speed``, ``--compile``, ``--attention``, ``--fp8`` (and ``--draft``): see the README's Speed section."""
    group = parser.add_argument_group("speed (GPU; each falls back with one line where it cannot run)")
    group.add_argument("--speed", choices=SPEED_CHOICES, default="off",
                       help="off (default); full: compiled blocks, fused QKV and the fastest exact attention, "
                            "same images up to bf16 rounding; fast: full + fp8 matmuls (Ada/Hopper GPUs)")
    group.add_argument("--compile", action="store_true", default=None,
                       help="compile the transformer's repeated blocks (the first image of a size compiles)")
    group.add_argument("--attention", default=None, metavar="BACKEND",
                       help="diffusers attention backend: auto, native, _native_cudnn, _flash_3, flash, sage...")
    group.add_argument("--fp8", action="store_true", default=None,
                       help="torchao float8 matmuls in the transformer (compute capability 8.9+)")
    if draft:
        group.add_argument("--draft", action="store_true",
                           help="a step cache (First Block Cache): about 2x faster, a slightly different image; "
                                "recorded in the PNG")


def speed_options(args: argparse.Namespace):
    """The :class:`core.loading.speed.SpeedOptions` of ``add_speed_arguments``' flags (the flags given override
    the mode's)."""
    from core.loading.speed import SpeedOptions

    return SpeedOptions.mode(getattr(args, "speed", None), compile=getattr(args, "compile", None),
                             attention_backend=getattr(args, "attention", None), fp8=getattr(args, "fp8", None))


def add_model_arguments(parser: argparse.ArgumentParser, *, base: bool = True, files: bool = False,
                        adapter: bool = False, dtype: bool = True) -> None:
    """The options that say which models load and how, declared once for every command that loads them:
    ``--models``, ``--base``, ``--vae``/``--clip``/``--t5`` (``files``), ``--adapter``, ``--preset`` and ``--dtype``
    (:func:`file_sources` reads the model ones)."""
    parser.add_argument("--models", default="default",
                        help="default (Hugging Face Hub), tiny (small random models to try the interface) or a "
                             "models folder (flux/, siglip/, dinov2/, adapter file), or a ComfyUI/Forge models folder")
    if base:
        parser.add_argument("--base", default=None, metavar="PATH",
                            help="FLUX.1 base: a diffusers folder or hub id, or one transformer file (BFL "
                                 ".safetensors, bf16 or fp8, or .gguf) used with the other FLUX parts of --models")
    if files:
        add_file_arguments(parser)
    if adapter:
        add_adapter_argument(parser)
    parser.add_argument("--preset", default="auto", choices=PRESET_CHOICES,
                        help="memory preset (default: auto picks from the detected GPU and RAM)")
    if dtype:
        parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                            help="weights dtype (default: the preset's on GPU, float32 on CPU)")


def add_file_arguments(parser: argparse.ArgumentParser) -> None:
    """``--vae``, ``--clip``, ``--t5``: FLUX's other parts as the single files ComfyUI and Forge use."""
    parser.add_argument("--vae", default=None, metavar="FILE", help="FLUX VAE file (ae.safetensors, BFL/ldm layout)")
    parser.add_argument("--clip", default=None, metavar="FILE", help="CLIP-L text encoder file (clip_l.safetensors)")
    parser.add_argument("--t5", default=None, metavar="FILE",
                        help="T5-XXL text encoder file (t5xxl_fp16 / bf16 / fp8_e4m3fn .safetensors, or .gguf)")


def file_sources(args: argparse.Namespace, *, always: bool = False):
    """The sources of ``--models`` with ``--base`` / ``--vae`` / ``--clip`` / ``--t5`` / ``--adapter`` applied (each
    file checked now): how every command turns its model flags into sources. None when none of them is given and
    ``--models`` says it all, unless ``always`` (then the sources of ``--models``)."""
    from core.loading.sources import ModelSources

    given = {k: getattr(args, k, None) for k in ("base", "vae", "clip", "t5", "adapter")}
    sources = ModelSources.parse(args.models)
    if not always and not any(given.values()) and not sources.notes:
        return None
    return (sources.with_base(given["base"]).with_files(vae=given["vae"], clip=given["clip"], t5=given["t5"])
            .with_adapter(given["adapter"]))


def add_adapter_argument(parser: argparse.ArgumentParser) -> None:
    """``--adapter FILE``: a trained image adapter (``train export``, or a run's ``adapter.safetensors``) in place of
    the models' own; recorded in each PNG by file name and SHA-256."""
    parser.add_argument("--adapter", default=None, metavar="FILE",
                        help="a trained image adapter (.safetensors or .bin, e.g. runs/NAME/adapter.safetensors) "
                             "instead of the models' own; recorded in the PNG by name and SHA-256")


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """The studio's options (the command's defaults when no subcommand is given)."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this computer only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (warns)")
    parser.add_argument("--auth", default=None, metavar="USER:PASS",
                        help="require a login; this user is the owner (may change settings and train remotely)")
    parser.add_argument("--guest", action="append", default=[], metavar="USER:PASS",
                        help="another login (repeatable) that may generate but not change settings or train")
    add_model_arguments(parser, files=True, dtype=False)
    parser.add_argument("--speed", choices=SPEED_CHOICES, default="off",
                        help="speed mode: off, full (compiled, lossless) or fast (+ fp8); see the README")
    parser.add_argument("--output-dir", default=None,
                        help="where generated PNGs go (default: outputs/ in the user data folder)")
    add_visitor_arguments(parser)


def add_visitor_arguments(parser: argparse.ArgumentParser) -> None:
    """What visitors of an exposed studio may use (``app.visitor_limits``); the owner is never limited."""
    group = parser.add_argument_group("visitors of an exposed studio (--share, a network --host, --guest logins)")
    group.add_argument("--visitor-jobs-per-session", type=int, default=2, metavar="N",
                       help="GPU jobs one browser session may have waiting (default 2)")
    group.add_argument("--visitor-jobs-per-address", type=int, default=4, metavar="N",
                       help="GPU jobs one client address may have waiting (default 4)")
    group.add_argument("--visitor-budget", type=float, default=120.0, metavar="MPX_STEPS",
                       help="largest request a visitor may make, in megapixels x steps x images (default 120: "
                            "1024x1024, 28 steps, 4 images)")
    group.add_argument("--allow-visitor-downloads", action="store_true",
                       help="let visitors name hub LoRAs not yet downloaded (default: only the owner downloads)")
