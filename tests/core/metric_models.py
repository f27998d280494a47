"""Tiny random CLIP and DINO models for the metric and benchmark tests, built locally (no hub files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.loading.tiny import build_tiny_clip, build_tiny_dino

__all__ = ["build_tiny_clip", "build_tiny_dino", "single_torch_thread", "tiny_metric_models", "tiny_scorer"]


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """Tiny models run fastest on one thread (thread start-up and contention cost more than the maths)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_metric_models(tmp_path_factory) -> dict[str, Path]:
    """Folders holding a tiny CLIP (model, tokenizer, image processor) and a tiny DINO ViT."""
    root = tmp_path_factory.mktemp("metric-models")
    return {"clip": build_tiny_clip(root / "clip"), "dino": build_tiny_dino(root / "dino")}


@pytest.fixture(scope="session")
def tiny_scorer(tiny_metric_models):
    """A CharacterScorer on the tiny models, on the CPU, segmenting with the threshold segmenter."""
    from core.evaluation.metrics import CharacterScorer

    return CharacterScorer(
        tiny_metric_models["clip"], tiny_metric_models["dino"], segmenter="threshold", device="cpu", batch_size=4
    )
