"""One rule set for where characters act: the engine and the trainer build the same attention conditions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.models.attention import CharacterCondition
from core.conditioning.character import Character
from core.conditioning.routing import AUTO_LAYOUT_NOTE, grid_weights, route_characters
from core.conditioning.masks import RoutingMask
from trainer.data import Example, Reference, cover_crop

SIZE = 64  # pixels: a 4 x 4 token grid on the tiny models
LENGTH = 32  # T5 tokens


def test_none_is_the_whole_image_and_several_get_the_automatic_layout():
    assert route_characters([None], 2, 2).weights == [None]
    routing = route_characters([None, None, None], 1, 3, prompt_order=[2, 0], names=["a", "b", "c"])
    assert routing.order == [2, 0, 1]  # named first, in prompt order; never named last
    assert [w.tolist() for w in routing.weights] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert routing.notes == [AUTO_LAYOUT_NOTE]
    mixed = route_characters([None, RoutingMask.from_spec("left")], 1, 2)
    assert mixed.order == [0, 1] and mixed.weights[0] is None and mixed.weights[1].tolist() == [1, 0]


def test_boxes_are_exact_and_empty_masks_are_noted():
    assert route_characters([RoutingMask.from_spec((0.25, 0, 0.75, 1))], 1, 4).weights[0].tolist() == [0, 1, 1, 0]
    assert RoutingMask.from_spec((0.1, 0, 0.6, 1)).weights(1, 2).tolist() == pytest.approx([0.8, 0.2])
    empty = route_characters([RoutingMask.from_spec(Image.new("L", (8, 8), 0)), None], 2, 2, names=["Ann", None])
    assert empty.notes == ["the mask of [Ann] is empty: that character will not appear"]
    # a window cut out of the image: the box stays exact; a box cut away routes nowhere
    box = RoutingMask.from_spec((0.5, 0, 1, 1))
    assert grid_weights(box, 1, 4, window=(0.25, 0, 0.75, 1)).tolist() == [0, 0, 1, 1]
    assert grid_weights(RoutingMask.from_spec((0, 0, 0.2, 1)), 1, 4, window=(0.25, 0, 0.75, 1)).max() == 0


def test_a_window_of_a_soft_mask_is_its_area_average():
    array = np.random.default_rng(0).random((40, 80)).astype(np.float32)
    mask = RoutingMask.from_spec(array)
    cut = grid_weights(mask, 2, 2, window=(0.25, 0, 0.75, 1))
    expected = array[:, 20:60].reshape(2, 20, 2, 20).mean(axis=(1, 3)).flatten()
    assert np.allclose(cut.numpy(), expected, atol=1e-5)
    assert torch.equal(grid_weights(mask, 2, 2, window=(0, 0, 1, 1)), mask.weights(2, 2))


def test_trainer_crops_boxes_like_its_targets(tiny_pipe, tmp_path):
    """On a wide target the trainer's box equals the area average of the box painted and centre-cropped."""
    from trainer.config import ObjectiveConfig
    from trainer.batch import BatchEncoder, EncodingCache

    Image.new("RGB", (1200, 800), (90, 90, 90)).save(tmp_path / "wide.png")
    painted = Image.new("L", (1200, 800), 0)
    painted.paste(255, (0, 0, 720, 800))  # box (0, 0, 0.6, 1)
    painted.save(tmp_path / "painted.png")
    example = Example(tmp_path / "wide.png", "[Ann]")
    encoder = BatchEncoder(tiny_pipe, ObjectiveConfig(), 16, EncodingCache(), 0)
    exact = encoder.routing(example, [Reference(tmp_path / "wide.png", "Ann", box=(0, 0, 0.6, 1))], SIZE)
    from_mask = encoder.routing(example, [Reference(tmp_path / "wide.png", "Ann", mask=tmp_path / "painted.png")], SIZE)
    cropped = np.asarray(cover_crop(painted, SIZE, Image.Resampling.BOX), dtype=np.float32) / 255
    expected = cropped.reshape(4, 16, 4, 16).mean(axis=(1, 3)).flatten()
    assert exact.weights[0].tolist()[:4] == pytest.approx([1, 1, 0.6, 0])  # 0.6 of 96 pixels, 16 cut off the left
    assert np.allclose(exact.weights[0].numpy(), expected, atol=0.02)
    assert np.allclose(from_mask.weights[0].numpy(), expected, atol=0.02)


def _files(tmp_path):
    colours = {"Ann": (200, 30, 30), "Bob": (30, 30, 200), "Cat": (30, 160, 30)}
    for name, colour in colours.items():
        image = Image.new("RGB", (48, 40), (240, 240, 240))
        image.paste(colour, (10, 8, 38, 36))
        image.save(tmp_path / f"{name}.png")
    Image.new("RGB", (SIZE, SIZE), (128, 128, 128)).save(tmp_path / "target.png")
    soft = np.outer(np.linspace(0, 1, 50), np.linspace(1, 0.2, 50)) * 255
    Image.fromarray(soft.astype(np.uint8), "L").save(tmp_path / "soft.png")
    return tmp_path


# caption, then per character: (name, engine mask, trainer mask file, trainer box)
CASES = {
    "none": ("[Ann] stands", [("Ann", None, None, None)]),
    "layout": ("[Ann] stands", [("Ann", "left", None, (0, 0, 0.5, 1))]),
    "box": ("[Ann] stands", [("Ann", (0.1, 0.3, 0.7, 0.95), None, (0.1, 0.3, 0.7, 0.95))]),
    "soft mask": ("[Ann] stands", [("Ann", "soft.png", "soft.png", None)]),
    "several, automatic": ("[Bob] waves at [Ann] and [Cat]", [("Ann", None, None, None), ("Bob", None, None, None),
                                                              ("Cat", None, None, None)]),
    "several, mixed": ("[Cat] and [Ann] meet [Bob]", [("Ann", (0.5, 0, 1, 1), None, (0.5, 0, 1, 1)),
                                                      ("Bob", None, None, None),
                                                      ("Cat", "soft.png", "soft.png", None)]),
}


def _engine_conditions(pipe, caption, characters, monkeypatch):
    seen = {}
    predict = pipe._predict

    def spy(latents, timestep, *args, **kwargs):
        seen.setdefault("conditions", args[-1])
        seen.setdefault("timestep", timestep)
        return predict(latents, timestep, *args, **kwargs)

    monkeypatch.setattr(pipe, "_predict", spy)
    pipe(caption, characters=characters, num_inference_steps=1, height=SIZE, width=SIZE, max_sequence_length=LENGTH,
         output_type="latent")
    monkeypatch.undo()
    return seen["conditions"], seen["timestep"]


def _trainer_conditions(pipe, example, timestep):
    from trainer.config import ObjectiveConfig
    from trainer.batch import BatchEncoder, EncodingCache
    from trainer.objective import _add_text
    from trainer.trainable import ImageAdapterPart, TextAdapterPart

    inputs = BatchEncoder(pipe, ObjectiveConfig(), LENGTH, EncodingCache(), 0).encode([example], SIZE, [("test", 0)])
    kwargs = {}
    with torch.no_grad():
        kwargs.update(ImageAdapterPart(pipe.image_proj, pipe.character_layers).attention_kwargs(inputs, timestep))
        kwargs.update(TextAdapterPart(pipe.text_adapter).attention_kwargs(inputs, timestep))
    _add_text(kwargs)
    return kwargs["character_conditions"]


@pytest.mark.parametrize("case", CASES)
def test_engine_and_trainer_get_identical_conditions(tiny_pipe, tmp_path, monkeypatch, case):
    from core.models.text_adapter import TextAdapter, TextAdapterConfig

    folder = _files(tmp_path)
    caption, spec = CASES[case]
    characters = [Character(folder / f"{name}.png", name=name, scale=1.0,
                            mask=Image.open(folder / mask) if isinstance(mask, str) and mask.endswith(".png") else mask)
                  for name, mask, _, _ in spec]
    references = tuple(Reference(folder / f"{name}.png", name, folder / mask if mask else None, box)
                       for name, _, mask, box in spec)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adapter = TextAdapter(TextAdapterConfig.for_pipeline(tiny_pipe, dim=64, depth=1, num_queries=4, token_dim=32))
        for p in adapter.parameters():
            torch.nn.init.normal_(p, std=0.05)  # not the zero start: the text tokens must show
    tiny_pipe.load_text_adapter(adapter)
    try:
        engine, timestep = _engine_conditions(tiny_pipe, caption, characters, monkeypatch)
        trainer = _trainer_conditions(tiny_pipe, Example(folder / "target.png", caption, references), timestep)
    finally:
        tiny_pipe.unload_text_adapter()
    assert len(engine) == len(trainer) == len(spec)
    for ours, theirs in zip(engine, trainer):
        assert isinstance(ours, CharacterCondition) and isinstance(theirs, CharacterCondition)
        assert ours.scale == theirs.scale == 1.0
        assert (ours.mask is None) == (theirs.mask is None)
        if ours.mask is not None:
            assert torch.equal(ours.mask, theirs.mask)
        assert torch.equal(ours.text_mask, theirs.text_mask)
        assert torch.allclose(ours.tokens, theirs.tokens, atol=1e-6)
        assert torch.allclose(ours.text_tokens, theirs.text_tokens, atol=1e-6)
    if case == "several, automatic":  # stripes left to right in the order the caption names them: Bob, Ann, Cat
        third = 1 / 3
        for condition, row in zip(engine, ([1, third, 0, 0], [0, 2 * third, 2 * third, 0], [0, 0, third, 1])):
            assert condition.mask.reshape(4, 4)[0].tolist() == pytest.approx(row)
        with torch.no_grad():
            bob = tiny_pipe.image_proj(context=tiny_pipe.character_context(characters[1]), timestep=timestep)
        assert torch.allclose(engine[0].tokens, bob, atol=1e-6)


def test_a_condition_always_has_image_tokens():
    with pytest.raises(TypeError, match="needs its image tokens"):
        CharacterCondition(None, 1.0)


def test_text_adapter_tokens_ride_on_the_image_conditions():
    from trainer.objective import _add_text

    image, text, mask = torch.ones(1, 2, 4), torch.zeros(1, 3, 4), torch.ones(1, 5)
    kwargs = {"character_conditions": [CharacterCondition(image, 1.0, None)], "character_text": [(text, mask)]}
    _add_text(kwargs)
    (condition,) = kwargs["character_conditions"]
    assert condition.tokens is image and condition.mask is None and condition.text_tokens is text
    assert "character_text" not in kwargs
    with pytest.raises(ValueError, match="needs the image adapter"):
        _add_text({"character_text": [(text, mask)]})
