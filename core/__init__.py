"""InstantCharacter Studio's engine: FLUX.1 with InstantCharacter characters, no UI.

The public API, imported lazily (``import core`` stays light: the command line's ``--help`` needs no torch)::

    from core import Engine, GenerationRequest, Character, InstantCharacterPipeline

Subpackages: :mod:`core.models` (model parts and the pipeline), :mod:`core.conditioning` (characters, masks,
prompts, attention conditions), :mod:`core.loading` (model sources, checkpoints, LoRAs, memory presets),
:mod:`core.io` (images, PNG metadata, paths), :mod:`core.story` (comics and storyboards), :mod:`core.evaluation`
(metrics and benchmarks of likeness). Top level: :mod:`core.request`, :mod:`core.engine`, :mod:`core.errors`,
:mod:`core.limits`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Engine": "core.engine",
    "EngineResult": "core.engine",
    "GenerationRequest": "core.request",
    "request_from_png": "core.request",
    "Character": "core.conditioning.character",
    "RoutingMask": "core.conditioning.masks",
    "InstantCharacterPipeline": "core.models.pipeline",
    "ModelSources": "core.loading.sources",
    "StyleLora": "core.loading.loras",
    "GenerationRecord": "core.io.metadata",
    "read_record": "core.io.metadata",
    "save_png": "core.io.metadata",
    "UserError": "core.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'core' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
