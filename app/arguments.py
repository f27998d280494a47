"""The studio's options and the choices commands share, defined where nothing heavy is imported.

``instantcharacter-studio --help`` answers from these without importing gradio, torch or diffusers (seconds each);
``app.studio.launch`` imports them when it runs.
"""

from __future__ import annotations

import argparse

from core.loading.memory import PRESET_ORDER

PRESET_CHOICES = ("auto",) + PRESET_ORDER
DTYPE_CHOICES = ("bfloat16", "float16", "float32")


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
    parser.add_argument("--models", default="default",
                        help="default (Hugging Face Hub), tiny (small random models to try the interface) or a "
                             "models folder (flux/, siglip/, dinov2/, adapter file)")
    parser.add_argument("--preset", default="auto", choices=PRESET_CHOICES, help="memory preset (default: auto)")
    parser.add_argument("--output-dir", default=None,
                        help="where generated PNGs go (default: outputs/ in the user data folder)")
