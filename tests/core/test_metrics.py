"""CLIP-I, DINO-I and CLIP-T on tiny random models; segmentation; input errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.evaluation.metrics import METRIC_RANGES, CharacterScorer, MetricsError, ScoreCase, image_reward_available
from core.conditioning.segmentation import BackgroundThresholdSegmenter, as_segmenter, isolate
from tests.core.metric_models import single_torch_thread, tiny_metric_models, tiny_scorer  # noqa: F401 (fixtures)


def shape_image(colour, background=(240, 240, 240), size=(64, 64), box=(16, 20, 44, 52), kind="ellipse"):
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    getattr(draw, kind)(box, fill=colour)
    return image


@pytest.fixture(scope="module")
def images():
    return [
        shape_image((220, 30, 30)),
        shape_image((30, 60, 220), kind="rectangle", box=(10, 10, 40, 50)),
        shape_image((40, 180, 60), background=(250, 250, 200), box=(30, 5, 60, 30)),
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)),
    ]


def test_identical_images_score_one(tiny_scorer, images):
    for image in images:
        assert tiny_scorer.clip_i(image, image.copy()) == pytest.approx(1.0, abs=1e-5)
        assert tiny_scorer.dino_i(image, image.copy()) == pytest.approx(1.0, abs=1e-5)


def test_scores_are_bounded(tiny_scorer, images):
    results = tiny_scorer.score(
        [ScoreCase(image=gen, prompt="a small red creature on a hill", references=[ref]) for ref in images for gen in images]
    )
    for result in results:
        for name, value in result.as_dict().items():
            if value is None:
                continue
            low, high = METRIC_RANGES[name]
            assert low <= value <= high, (name, value)
    assert all(result.clip_t is not None and result.clip_i is not None for result in results)


def test_batched_scores_equal_single_scores(tiny_metric_models, images):
    prompts = ["a red ball", "a blue box standing in the rain", "green", "noise " * 40]
    cases = [
        ScoreCase(image=images[i], prompt=prompts[i], references=[images[(i + 1) % 4], images[(i + 2) % 4]])
        for i in range(4)
    ]
    batched = CharacterScorer(
        tiny_metric_models["clip"], tiny_metric_models["dino"], segmenter="threshold", device="cpu", batch_size=8
    ).score(cases)
    single = CharacterScorer(
        tiny_metric_models["clip"], tiny_metric_models["dino"], segmenter="threshold", device="cpu", batch_size=1
    )
    for case, result in zip(cases, batched):
        alone = single.score([case])[0]
        for name in ("clip_i", "dino_i", "clip_t"):
            assert getattr(result, name) == pytest.approx(getattr(alone, name), abs=1e-5)
        for index, reference in enumerate(case.references):
            assert result.per_character[index]["clip_i"] == pytest.approx(single.clip_i(reference, case.image), abs=1e-5)
            assert result.per_character[index]["dino_i"] == pytest.approx(single.dino_i(reference, case.image), abs=1e-5)
        assert result.clip_t == pytest.approx(single.clip_t(case.image, case.prompt), abs=1e-5)


def test_reference_features_are_cached(tiny_metric_models, images):
    scorer = CharacterScorer(tiny_metric_models["clip"], None, device="cpu")
    calls = []
    original = scorer.image_embeddings
    scorer.image_embeddings = lambda kind, batch: calls.append(len(batch)) or original(kind, batch)
    for generated in images:
        scorer.clip_i(images[0].copy(), generated)
    # the reference is encoded once (first call: reference + generated), then only the generated image
    assert calls == [1, 1, 1, 1, 1]
    assert len(scorer._reference_cache) == 1


def test_threshold_segmenter_isolates_a_shape():
    image = shape_image((200, 40, 160), background=(30, 120, 200), size=(80, 60), box=(20, 10, 50, 40), kind="rectangle")
    mask = BackgroundThresholdSegmenter()(image)
    assert mask.mode == "L" and mask.size == image.size
    truth = np.zeros((60, 80), bool)
    truth[10:41, 20:51] = True
    assert mask.getbbox() == (20, 10, 51, 41)
    assert np.mean((np.asarray(mask) > 127) == truth) > 0.999  # the median filter may round the 4 corners off
    character = isolate(image, mask)
    assert character.size == (31, 31)
    assert np.mean(np.all(np.asarray(character) == (200, 40, 160), axis=-1)) > 0.99
    # on an image with a background around the shape, the background becomes white
    ring = shape_image((200, 40, 160), background=(30, 120, 200), size=(80, 60), box=(20, 10, 50, 40))
    pixels = np.asarray(isolate(ring, BackgroundThresholdSegmenter()(ring)))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[15, 15]) == (200, 40, 160)


def test_segmentation_ignores_the_background(tiny_scorer):
    # the same character on two different plain backgrounds is the same character once segmented
    first = shape_image((220, 30, 30), background=(240, 240, 240))
    second = shape_image((220, 30, 30), background=(20, 90, 40))
    assert tiny_scorer.clip_i(first, second) == pytest.approx(1.0, abs=1e-5)
    unsegmented = CharacterScorer(tiny_scorer._clip.source, None, device="cpu")
    assert unsegmented.clip_i(first, second) < 0.9999


def test_explicit_masks_and_segmenter_objects(tiny_metric_models):
    image = shape_image((220, 30, 30))
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).rectangle((16, 20, 44, 52), fill=255)

    class ObjectSegmenter:
        def segment(self, image):
            return mask

    scorer = CharacterScorer(tiny_metric_models["clip"], tiny_metric_models["dino"], segmenter=ObjectSegmenter(), device="cpu")
    assert scorer.dino_i(image, image, generated_mask=mask, reference_mask=mask) == pytest.approx(1.0, abs=1e-5)
    result = scorer.score([ScoreCase(image=image, references=[image], regions=[(0.0, 0.0, 1.0, 1.0)])])[0]
    assert result.clip_i == pytest.approx(1.0, abs=1e-5) and result.clip_t is None


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_bad_inputs_give_one_line_errors(tiny_scorer, tmp_path):
    image = shape_image((1, 2, 3))
    with pytest.raises(TypeError) as error:
        tiny_scorer.clip_i(42, image)
    assert "PIL image" in one_line(error)
    with pytest.raises(MetricsError) as error:
        tiny_scorer.dino_i(tmp_path / "missing.png", image)
    assert "missing.png: file not found" in one_line(error)
    (tmp_path / "not-an-image.png").write_text("hello")
    with pytest.raises(MetricsError) as error:
        tiny_scorer.clip_i(tmp_path / "not-an-image.png", image)
    assert "not-an-image.png is not an image file" in one_line(error)
    with pytest.raises(MetricsError) as error:  # the engine's limits: it would refuse this character too
        tiny_scorer.clip_i(Image.new("RGB", (8, 8)), image)
    assert "at least 16x16" in one_line(error)
    with pytest.raises(TypeError) as error:
        tiny_scorer.clip_t(image, None)
    one_line(error)
    with pytest.raises(ValueError):
        as_segmenter("magic")


def test_missing_model_folder_is_a_one_line_error(tmp_path):
    scorer = CharacterScorer(tmp_path / "no-such-clip", tmp_path / "no-such-dino", device="cpu")
    with pytest.raises(MetricsError) as error:
        scorer.clip_i(shape_image((1, 2, 3)), shape_image((1, 2, 3)))
    assert one_line(error) == f"CLIP model folder not found: {tmp_path / 'no-such-clip'}"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MetricsError) as error:
        CharacterScorer(None, empty, device="cpu").dino_i(shape_image((1, 2, 3)), shape_image((1, 2, 3)))
    assert "could not load DINO model" in one_line(error)


@pytest.mark.skipif(image_reward_available(), reason="the image-reward package is installed here")
def test_image_reward_is_skipped_with_a_message(tiny_metric_models):
    scorer = CharacterScorer(tiny_metric_models["clip"], None, device="cpu", image_reward=True)
    with pytest.warns(UserWarning, match="pip install image-reward"):
        result = scorer.score([ScoreCase(image=shape_image((1, 2, 3)), prompt="a dot")])[0]
    assert result.image_reward is None and result.clip_t is not None
    assert "image_reward" not in scorer.metrics


def test_scoring_an_engine_generation(tiny_scorer):
    """The studio's path: score an image against the engine's Character objects and tagged prompt."""
    pytest.importorskip("core.conditioning.character")
    from core.conditioning.character import Character
    from core.evaluation.metrics import case_from_characters

    ruby = shape_image((220, 30, 30))
    sky = shape_image((30, 60, 220), kind="rectangle")
    generated = Image.new("RGB", (128, 64), (240, 240, 240))
    generated.paste(ruby, (0, 0))
    generated.paste(sky, (64, 0))
    characters = [Character(ruby, name="Ruby", mask="left", description="a red ball"),
                  Character(sky, name="Sky", mask="right")]
    case = case_from_characters(generated, "[Ruby] meets [Sky]", characters)
    assert case.prompt == "a red ball meets Sky" and case.regions == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    result = tiny_scorer.score([case])[0]
    assert [c["clip_i"] for c in result.per_character] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert result.dino_i == pytest.approx(1.0, abs=1e-5) and -1 <= result.clip_t <= 1


class _Spy:
    """Stands in for a processor and keeps the images it is given."""

    def __init__(self, processor):
        self.processor, self.images = processor, []

    def __call__(self, *args, images=None, **kwargs):
        self.images.append([np.asarray(image).copy() for image in images])
        return self.processor(*args, images=images, **kwargs)


@pytest.mark.parametrize("given", ["path", "PIL image", "Character"])
def test_a_transparent_character_is_scored_on_the_pixels_the_engine_saw(tiny_metric_models, tmp_path,
                                                                          monkeypatch, given):
    from core.conditioning.character import Character
    from core.io.images import load_image
    from core.evaluation.metrics import case_from_characters

    path = tmp_path / "ruby.png"
    ruby = Image.new("RGBA", (64, 64), (20, 200, 20, 0))  # hidden green behind full transparency
    ImageDraw.Draw(ruby).ellipse((16, 12, 48, 52), fill=(220, 30, 30, 255))
    ruby.putpixel((5, 5), (0, 0, 255, 128))  # half transparent
    ruby.save(path)
    engine_pixels = np.asarray(load_image(path))
    assert engine_pixels[0, 0].tolist() == [255, 255, 255] and engine_pixels[5, 5].tolist() == [127, 127, 255]
    assert not np.array_equal(engine_pixels, np.asarray(Image.open(path).convert("RGB")))  # alpha dropped

    scorer = CharacterScorer(tiny_metric_models["clip"], tiny_metric_models["dino"], device="cpu")
    spies = {}
    for kind in ("clip", "dino"):
        encoder = scorer._encoder(kind)
        spies[kind] = _Spy(encoder.processor)
        monkeypatch.setattr(encoder, "processor", spies[kind])
    generated = shape_image((220, 30, 30))
    if given == "Character":
        case = case_from_characters(generated, None, [Character(path)])
    else:
        case = ScoreCase(image=generated, references=[path if given == "path" else Image.open(path)])
    scorer.score([case])
    for spy in spies.values():
        reference, crop = spy.images  # the reference first, then the generated character
        assert np.array_equal(reference[0], engine_pixels)
        assert np.array_equal(crop[0], np.asarray(generated))
