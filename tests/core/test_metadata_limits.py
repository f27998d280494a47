"""Recall reads untrusted PNGs: every field of the settings is checked, and no file can make it use unbounded
memory or time (decompression bombs, text-chunk bombs, deep JSON, huge masks). Real records still read."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from core.io.images import ImageInputError, load_image
from core.limits import MAX_SEED, MAX_SIDE
from core.conditioning.character import Character
from core.conditioning.masks import MaskError, RoutingMask
from core.io.metadata import (CharacterRecord, GenerationRecord, MetadataError, image_from_b64, image_to_b64,
                           read_record, save_png)
from tests.core.crafted_png import b64, bilevel_png, png_with_settings, record, ztxt_bomb


def _message(fn, *args, error=MetadataError) -> str:
    with pytest.raises(error) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def _photo(side: int) -> Image.Image:
    """A noisy image whose PNG does not compress: the size of a real photo's."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


# ---------------------------------------------------------------------- real records
def test_a_real_record_over_pillows_text_limit_reads(tmp_path):
    """Character images make the settings chunk larger than Pillow's 1 MB MAX_TEXT_CHUNK; Recall still reads it."""
    character = _photo(768)
    record_ = GenerationRecord(prompt="[Mia] at the beach", seed=MAX_SEED, width=1024, height=768,
                               characters=[Character(character, name="Mia").record()])
    path = save_png(Image.new("RGB", (64, 48)), tmp_path / "real.png", record_)
    assert len(record_.to_json()) > 1024 * 1024
    with pytest.raises(ValueError, match="too large"):
        Image.open(path)  # what Recall used to do, and why it failed
    back = read_record(path)
    assert (back.prompt, back.seed, back.width, back.height) == ("[Mia] at the beach", MAX_SEED, 1024, 768)
    assert np.array_equal(np.asarray(image_from_b64(back.characters[0].image)), np.asarray(character))
    assert read_record(path.read_bytes()).seed == MAX_SEED
    with open(path, "rb") as handle:
        assert read_record(handle).seed == MAX_SEED
    assert load_image(path).size == (64, 48)  # a studio output with big settings is still a usable character image


def test_old_records_with_every_kind_of_mask(tmp_path):
    painted = RoutingMask.from_spec(Image.new("L", (300, 200), 255))
    characters = [CharacterRecord(image_to_b64(Image.new("RGB", (32, 32))), name=name, mask=mask)
                  for name, mask in (("A", "left"), ("B", "box:0.5,0,1,1"), ("C", painted.to_json()), ("D", None))]
    record_ = GenerationRecord(prompt="[A] [B] [C] [D]", seed=2**31 + 5, characters=characters,
                               loras=[{"source": "owner/style", "weight": 0.8, "trigger": "ghibli"}],
                               models={"base": "x", "text_adapter": None}, preset="low")
    back = read_record(save_png(Image.new("RGB", (32, 32)), tmp_path / "old.png", record_))
    assert back == record_
    masks = [Character.from_record(c).mask for c in back.characters]
    assert masks[0].box == (0.0, 0.0, 0.5, 1.0) and masks[2].image.shape == (200, 300) and masks[3] is None


# ---------------------------------------------------------------------- bombs
def test_decompression_bomb_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bilevel_png(30000, 30000, pixels=False))  # 900 megapixels claimed, 100 bytes on disk
    assert _message(load_image, path, error=ImageInputError) == \
        f"{path} is far over the 40 megapixel limit: refused before decoding"
    assert "carries no InstantCharacter Studio settings" in _message(read_record, path)  # never decoded
    assert _message(image_from_b64, b64(path.read_bytes())) == \
        "the character image is far over the 40 megapixel limit: refused before decoding"
    assert _message(image_from_b64, b64(bilevel_png(8000, 6250, pixels=False))) == \
        "the character image is 8000x6250 (50.0 megapixels): the limit is 40 megapixels"


def test_text_chunk_bomb_in_the_settings():
    data = bilevel_png(32, 32, text=[ztxt_bomb("instantcharacter", 100 * 2**20)])  # 100 MB of text in ~100 kB
    assert len(data) < 200_000
    start = time.perf_counter()
    assert _message(read_record, data) == "the image's settings inflate to more than 64 MB: refused"
    assert time.perf_counter() - start < 5


def test_text_chunk_bomb_elsewhere_is_ignored(tmp_path):
    """Pillow refuses any PNG whose text inflates past 1 MB ("Decompressed data too large"); the pixels never need
    the text, so a character image or a Recall with such a chunk works."""
    bomb = ztxt_bomb("comment", 50 * 2**20)
    path = tmp_path / "chatty.png"
    path.write_bytes(bilevel_png(32, 32, text=[bomb]))
    with pytest.raises(ValueError, match="too large"):
        Image.open(path)
    assert load_image(path).size == (32, 32)
    plain = png_with_settings(record())
    assert read_record(plain[:33] + bomb + plain[33:]).seed == 7  # after IHDR


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000, "the image's settings nest deeper than 8 levels"),
    (json.dumps(record(models={"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}})),
     "the image's settings nest deeper than 8 levels"),
    ('{"prompt": "a", "seed": 1, "x": [' + "0," * 600_000 + "0]}",
     "the image's settings hold too many values (1,200,024 characters outside strings; at most 1,048,576)"),
    ("{not json", "the image's settings are not valid JSON (Expecting property name enclosed in double quotes: "
                  "line 1 column 2 (char 1))"),
    ('{"prompt": "a", "seed": 1' + "1" * 5000 + "}", "the image's settings hold a number too long to read"),
    ("[1, 2]", "the image's settings are not usable: they must be a JSON object, got list"),
])
def test_json_that_is_too_big_deep_or_broken(text, message):
    start = time.perf_counter()
    assert _message(GenerationRecord.from_json, text) == message
    assert time.perf_counter() - start < 2


# ---------------------------------------------------------------------- every field checked
@pytest.mark.parametrize("fields, message", [
    (dict(seed=10**30), "seed must be from 0 to 4294967295, got 1000000000000000000000000000000"),
    (dict(seed=-1), "seed must be from 0 to 4294967295, got -1"),
    (dict(seed="7"), "seed must be a whole number from 0 to 4294967295, got '7'"),
    (dict(seed=1.5), "seed must be a whole number from 0 to 4294967295, got 1.5"),
    (dict(width=0), "width must be from 16 to 4096, got 0"),
    (dict(height=1000), "height 1000 is not a multiple of 16: use 992 or 1008"),
    (dict(width=True), "width must be a whole number from 16 to 4096, got True"),
    (dict(num_inference_steps=-5), "num_inference_steps must be from 1 to 100, got -5"),
    (dict(num_inference_steps="many"), "num_inference_steps must be a whole number from 1 to 100, got 'many'"),
    (dict(guidance_scale=1e308 * 10), "guidance_scale must be from 0 to 30, got inf"),
    (dict(guidance_scale=None), "guidance_scale must be a number from 0 to 30, got None"),
    (dict(true_cfg_scale=0), "true_cfg_scale must be from 1 to 20, got 0"),
    (dict(prompt=["a"]), "prompt must be text, got list"),
    (dict(prompt="x" * 4001), "prompt is 4,001 characters long: the limit is 4,000"),
    (dict(negative_prompt=5), "negative_prompt must be text, got int"),
    (dict(max_sequence_length=10**6), "max_sequence_length must be from 1 to 512, got 1000000"),
    (dict(characters={"a": 1}), "characters must be a list, got dict"),
    (dict(characters=[{}] * 9), "9 characters given: at most 8"),
    (dict(characters=[5]), "character 1 must be an object, got int"),
    (dict(characters=[{"name": "A"}]), "character 1 has no image"),
    (dict(characters=[{"image": "x", "scale": "big"}]), "character 1's scale must be a number from 0 to 2, got 'big'"),
    (dict(characters=[{"image": "x", "scale": 3}]), "character 1's scale must be from 0 to 2, got 3"),
    (dict(characters=[{"image": "x", "name": "n" * 65}]), "character 1's name is 65 characters long: the limit is 64"),
    (dict(characters=[{"image": "x", "mask": {"a": 1}}]),
     "character 1's mask must be a layout name, a box of four numbers or a PNG, got {'a': 1}"),
    (dict(characters=[{"image": "x", "mask": "spiral"}]), "character 1's mask: unknown layout 'spiral'"),
    (dict(characters=[{"image": "x", "mask": [0, 0, 2, 1]}]), "character 1's mask: box 0,0,2,1 is outside [0, 1]"),
    (dict(loras=[{}] * 4), "4 loras given: at most 3"),
    (dict(loras=[{"source": "a", "weight": 9}]), "LoRA 1's weight must be from -2 to 2, got 9"),
    (dict(models=[1]), "models must be an object, got list"),
    (dict(version=2), "they are format 2, from a newer InstantCharacter Studio"),
])
def test_each_field_is_checked(fields, message):
    got = _message(GenerationRecord.from_json, json.dumps(record(**fields)))
    assert got.startswith("the image's settings are not usable: ") and message in got, got


def test_missing_prompt_or_seed():
    data = record()
    del data["seed"]
    assert "the prompt or the seed is missing" in _message(GenerationRecord.from_json, json.dumps(data))


def test_images_and_masks_inside_the_settings():
    assert _message(image_from_b64, "not base64!") == "the character image is not a base64 PNG"
    assert _message(image_from_b64, b64(b"hello")) == "the character image is not an image file Pillow can read"
    notes = "png:" + b64(b"just some notes")
    assert _message(RoutingMask.from_json, notes, "character 1's mask", error=MaskError) == \
        "character 1's mask is not an image file Pillow can read"
    assert _message(RoutingMask.from_json, "png:%%%", error=MaskError) == "the mask is not a base64 PNG"
    assert _message(RoutingMask.from_json, "png:" + b64(bilevel_png(30000, 30000, pixels=False)),
                    error=MaskError) == "the mask is far over the 40 megapixel limit: refused before decoding"
    bad = CharacterRecord(image=b64(b"hello"), mask=notes)
    assert _message(Character.from_record, bad, "character 2") == "character 2's mask is not an image file Pillow can read"


def test_large_masks_are_scaled_down_before_becoming_floats():
    mask = RoutingMask.from_json("png:" + b64(bilevel_png(6000, 3000)))
    assert mask.image.shape == (MAX_SIDE // 2, MAX_SIDE) and mask.image.dtype == np.float32
    assert RoutingMask.from_spec(Image.new("L", (5000, 100), 255)).image.shape == (82, MAX_SIDE)
    assert RoutingMask.from_spec(np.ones((100, 8192), np.float32)).image.shape == (50, MAX_SIDE)
    small = Image.new("L", (300, 200), 128)  # within the bound: unchanged, so old records reproduce exactly
    assert np.array_equal(RoutingMask.from_spec(small).image, np.asarray(small, np.float32) / 255.0)


def test_not_a_png_or_not_an_image():
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="JPEG")
    assert "carries no InstantCharacter Studio settings" in _message(read_record, buffer.getvalue())
    assert _message(read_record, b"hello") == "not an image file"


# ---------------------------------------------------------------------- single-file model sources
def test_a_record_naming_single_files_reads_back(tmp_path):
    """Parts loaded from single files are recorded by name and digest (Engine.provenance); Recall reads them."""
    models = {"base": "black-forest-labs/FLUX.1-dev", "vae": {"file": "ae.safetensors", "digest": "abc123"},
              "text_encoder_2": {"file": "t5xxl_fp8_e4m3fn.safetensors", "digest": "def456"}}
    path = tmp_path / "files.png"
    save_png(Image.new("RGB", (16, 16)), path, GenerationRecord(prompt="a cat", seed=1, models=models))
    assert read_record(path).models == models


@pytest.mark.parametrize("entry, expected", [
    ({"file": "ae.safetensors"}, "models['vae'] must be text or an object with 'file' and 'digest'"),
    ({"file": 3, "digest": "x"}, "models['vae']'s file must be text"),
    ({"file": "a" * 300, "digest": "x"}, "models['vae']'s file is 300 characters long"),
])
def test_a_bad_single_file_entry_is_one_line(entry, expected):
    data = {"prompt": "a cat", "seed": 1, "models": {"vae": entry}}
    assert expected in _message(GenerationRecord.from_json, json.dumps(data))
