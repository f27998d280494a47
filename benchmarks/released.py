"""The released code's way of running, for ``bench --as-released``: the whole projector recomputed from the encoder
features at every step and nothing cached between calls (:class:`ReleasedStylePipeline`, made of the engine's loaded
pipeline by :func:`released_style`)."""

from __future__ import annotations

from collections.abc import Sequence

from core.models.pipeline import InstantCharacterPipeline


class _StepTokens(Sequence):
    """Per-step character tokens made when a step asks for them (inside the denoising loop)."""

    def __init__(self, make, length: int):
        self._make, self._length = make, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i):
        return self._make(i)


class ReleasedStylePipeline(InstantCharacterPipeline):
    """The released code's cost model: the whole projector runs from the encoder features at every step.

    Nothing is reused between calls (features, projector context and prompt embeddings are recomputed); the
    image is encoded once per call, as the released code does. Outputs equal :class:`InstantCharacterPipeline`'s.
    """

    def __call__(self, *args, **kwargs):
        self.clear_caches()
        return super().__call__(*args, **kwargs)

    def character_tokens(self, characters, timesteps, dtype, device, batch, *args, **kwargs):
        parent = super().character_tokens

        def tokens_at(i):
            self.clear_character_contexts()  # the whole projector again, from the (once per call) encoder features
            return parent(characters, timesteps[i:i + 1], dtype, device, batch, *args, **kwargs)[0]

        return _StepTokens(tokens_at, len(timesteps))


def released_style(pipe: InstantCharacterPipeline) -> ReleasedStylePipeline:
    """``pipe`` (loaded by the engine) running the released code's way from now on: the same models and weights, only
    :class:`ReleasedStylePipeline`'s methods (it adds no state of its own)."""
    pipe.__class__ = ReleasedStylePipeline
    pipe.clear_caches()
    return pipe
