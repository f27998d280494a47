"""Every bad input named by the engine issue gets a one-line message that names the problem."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
from PIL import Image

from core.conditioning.character import Character, CharacterError, check_characters
from core.loading.checkpoint import CheckpointError, build_adapter, check_compatible, read_adapter, save_adapter
from core.io.images import ImageInputError, load_image
from core.errors import UserError
from core.limits import LimitError
from core.loading.sources import ModelSourceError, ModelSources


def _one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_non_image_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello, not an image")
    with pytest.raises(ImageInputError) as exc:
        Character(bad)
    assert "not an image" in _one_line(exc) and "notes.png" in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match="file not found"):
        Character(tmp_path / "nope.png")


def test_one_pixel_image():
    with pytest.raises(ImageInputError) as exc:
        Character(Image.new("RGB", (1, 1)))
    assert "1x1" in _one_line(exc)


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (8000, 6250)).save(path)  # 50 megapixels, a few kB on disk
    with pytest.raises(ImageInputError) as exc:
        load_image(path)
    assert "50.0 megapixels" in _one_line(exc)


def test_truncated_image(tmp_path):
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        load_image(path)


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "I;16", "P", "LA"])
def test_odd_modes_become_rgb(mode):
    image = Image.new("RGB", (40, 30), (10, 200, 30)).convert(mode)
    assert load_image(image).mode == "RGB"


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = load_image(path)
    assert image.mode == "RGB" and image.getpixel((5, 5))[0] > 200


@pytest.mark.parametrize("kwargs, needle", [
    (dict(width=40), "width 40 is not a multiple of 16: use 32 or 48"),
    (dict(height=1000), "height 1000 is not a multiple of 16: use 992 or 1008"),
    (dict(num_inference_steps=0), "num_inference_steps must be from 1 to 100, got 0"),
    (dict(output_type="jpeg"), "output_type"),
    (dict(true_cfg_scale=0.5), "true_cfg_scale must be from 1 to 20, got 0.5"),
])
def test_bad_generation_settings(tiny_pipe, kwargs, needle):
    settings = dict(num_inference_steps=1, height=32, width=32) | kwargs
    with pytest.raises(UserError) as exc:
        tiny_pipe("a cat", **settings)
    assert needle in _one_line(exc)


def test_empty_prompt(tiny_pipe):
    with pytest.raises(LimitError, match="write a prompt first"):
        tiny_pipe("  ", num_inference_steps=1, height=32, width=32)


def test_too_many_characters_and_duplicates():
    image = Image.new("RGB", (32, 32))
    with pytest.raises(CharacterError, match="at most 8"):
        check_characters([Character(image, name=f"c{i}") for i in range(9)])
    with pytest.raises(CharacterError, match="two characters are named 'ann'"):
        check_characters([Character(image, name="Ann"), Character(image, name="ann")])


def test_adapter_that_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "adapter.bin"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError) as exc:
        read_adapter(junk)
    assert "not a readable PyTorch checkpoint" in _one_line(exc)
    junk_st = tmp_path / "adapter.safetensors"
    junk_st.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_adapter(junk_st)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.bin"
    torch.save({"image_proj": Evil(), "ip_adapter": {}}, path)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_adapter(path)


def test_checkpoint_of_another_kind(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not an InstantCharacter adapter"):
        read_adapter(path)


def test_adapter_from_another_model(tiny_models, golden_pipe):
    weights = read_adapter(tiny_models / "adapter.safetensors")
    with pytest.raises(CheckpointError) as exc:
        check_compatible(weights.config, golden_pipe.transformer, 128, weights.source)
    assert "attention layers of width 64 (head 32)" in _one_line(exc)
    with pytest.raises(CheckpointError, match="expects 64-wide image features"):
        check_compatible(weights.config, _FakeTransformer(2, 2, 32), 999, weights.source)


class _FakeTransformer:
    def __init__(self, heads, layers, head):
        from types import SimpleNamespace

        self.config = SimpleNamespace(num_layers=layers // 2, num_single_layers=layers - layers // 2,
                                      num_attention_heads=heads, attention_head_dim=head)


def test_missing_and_unexpected_keys_are_named(tiny_models, tmp_path):
    weights = read_adapter(tiny_models / "adapter.safetensors")
    dropped = dict(weights.image_proj)
    del dropped["proj.fc2.bias"]
    save_adapter(tmp_path / "a.safetensors", dropped, weights.ip_adapter)
    with pytest.raises(CheckpointError, match="missing key 'proj.fc2.bias'"):
        build_adapter(read_adapter(tmp_path / "a.safetensors"))
    extra = dict(weights.ip_adapter)
    extra["0.to_q_ip.weight"] = torch.zeros(1)
    save_adapter(tmp_path / "b.safetensors", weights.image_proj, extra)
    with pytest.raises(CheckpointError, match="unexpected key '0.to_q_ip.weight'"):
        build_adapter(read_adapter(tmp_path / "b.safetensors"))


def test_models_directory_with_a_part_missing(tiny_models, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(tiny_models, broken)
    shutil.rmtree(broken / "dinov2")
    with pytest.raises(ModelSourceError) as exc:
        ModelSources.from_models_dir(broken)
    assert "missing: dinov2" in _one_line(exc)
    (broken / "adapter.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="adapter file"):
        ModelSources.from_models_dir(broken)


def test_hub_model_not_cached_offline(monkeypatch):
    from core.loading.sources import resolve_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as exc:
        resolve_folder("someone/not-a-real-model-xyz", "SigLIP")
    assert "someone/not-a-real-model-xyz" in _one_line(exc)


def test_gated_model_message(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    from core.loading import sources

    import httpx

    response = httpx.Response(403, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))

    def gated(*args, **kwargs):
        raise GatedRepoError("403 gated", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(ModelSourceError) as exc:
        sources.resolve_folder("black-forest-labs/FLUX.1-dev", "FLUX base model")
    message = _one_line(exc)
    assert "gated" in message and "hf auth login" in message and "HF_TOKEN" in message


def test_decompression_bomb_character(tmp_path):
    from tests.core.crafted_png import bilevel_png

    path = tmp_path / "bomb.png"
    path.write_bytes(bilevel_png(30000, 30000, pixels=False))  # Pillow raises DecompressionBombError at open
    with pytest.raises(ImageInputError) as exc:
        Character(path)
    assert _one_line(exc) == f"{path} is far over the 40 megapixel limit: refused before decoding"


def test_character_name_description_and_scale_limits():
    image = Image.new("RGB", (32, 32))
    with pytest.raises(CharacterError) as exc:
        Character(image, name="N" * 65)
    assert "must be 1-64 characters without brackets" in _one_line(exc)
    assert Character(image, name="N" * 64).name == "N" * 64
    with pytest.raises(CharacterError, match="the description is 501 characters long: the limit is 500"):
        Character(image, name="Ann", description="d" * 501)
    with pytest.raises(CharacterError, match="character image: scale must be a number from 0 to 2, got nan"):
        Character(image, scale=float("nan"))
    with pytest.raises(CharacterError, match="name must be text, got int"):
        Character(image, name=5)


@pytest.mark.parametrize("sign", [1, -1])
def test_an_int_too_long_to_print_gets_a_limit_message(sign):
    """Python refuses repr() of ints over 4300 digits: the limits' messages say so instead of failing."""
    from core.limits import LimitError, check_int, check_number, check_seed
    from core.request import GenerationRequest

    value = sign * 10**5000
    for check in (lambda: check_int(value, "steps", 1, 100), lambda: check_number(value, "guidance", 0, 30),
                  lambda: check_seed(value), lambda: GenerationRequest("a cat", steps=value)):
        with pytest.raises(LimitError, match="too long to show"):
            check()
