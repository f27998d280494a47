"""``python -m trainer CONFIG [--resume]`` (also under ``torchrun`` and ``accelerate launch``)."""

import sys

from .cli import main

sys.exit(main())
