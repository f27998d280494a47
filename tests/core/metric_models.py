"""Tiny random CLIP and DINO models for the metric and benchmark tests, built locally (no hub files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def _byte_level_vocabulary() -> dict[str, int]:
    """CLIP's printable stand-ins for the 256 bytes, alone and as word ends, after the two special tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted, extra = [], 0
    for byte in range(256):
        if byte in printable:
            shifted.append(chr(byte))
        else:
            shifted.append(chr(256 + extra))
            extra += 1
    vocabulary = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in shifted:
            vocabulary.setdefault(symbol + suffix, len(vocabulary))
    return vocabulary


def build_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    vocabulary = _byte_level_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[])
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocabulary), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(
            image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2,
        ),
        projection_dim=16,
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_dino(folder: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(1)
    config = ViTConfig(
        image_size=48, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 48, "width": 48}).save_pretrained(folder)
    return folder


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
    from core.metrics import CharacterScorer

    return CharacterScorer(
        tiny_metric_models["clip"], tiny_metric_models["dino"], segmenter="threshold", device="cpu", batch_size=4
    )
