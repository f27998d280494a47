"""``core.pipeline`` as earlier releases named it: the pipeline lives in :mod:`core.models.pipeline`."""

from core.models.pipeline import (  # noqa: F401
    GenerationInputError,
    InstantCharacterPipeline,
    InstantCharacterPipelineOutput,
    check_settings,
)
