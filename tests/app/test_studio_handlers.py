"""Every bad input of the studio gives a one-line message on the page (gr.Error), tested through the handlers."""

from __future__ import annotations

import io
import time

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from app.context import MAX_STUDIO_CHARACTERS, StudioContext, StudioSettings
from app.mask_canvas import LAYER_NAMES, blank_canvas, layout_canvas
from app.tabs import generate_events as ev


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


@pytest.fixture
def ctx(tmp_path):
    return StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))


def run(ctx, **fields):
    """The Generate handler as the page calls it; returns its outputs or raises gr.Error."""
    fields.setdefault("prompt", "a portrait")
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("steps", 2)
    return ev.GenerateEvents(ctx).generate(None, NoProgress(), *ev.form_values(**fields), [])


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(gr.Error) as info:
        fn(*args, **kwargs)
    message = info.value.message
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture
def no_models(ctx, monkeypatch):
    """Fails the test if a handler tries to load models (bad input must be caught first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("models were loaded for a bad input")
    monkeypatch.setattr(ctx, "pipeline", refuse)


# ---------------------------------------------------------------------- images
def test_not_an_image(ctx, no_models, tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    assert "Character 1 is not an image file" in error_of(run, ctx, image1=str(path))


def test_truncated_image(ctx, no_models, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (10, 200, 30)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert "truncated or corrupt" in error_of(run, ctx, image1=str(path))


def test_one_pixel_image(ctx, no_models, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    assert "is 1x1 pixels: at least 16x16 is needed" in error_of(run, ctx, image1=str(path))


def test_fifty_megapixel_image(ctx, no_models, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (10000, 5000)).save(path)  # 50 MP; refused from the header, before decoding
    assert "is 10000x5000 (50.0 megapixels): the limit is 40 megapixels" in error_of(run, ctx, image1=str(path))


def _accepted_note(ctx, path) -> str:
    from app.generation import build_characters
    from app.generation import CharacterSlot

    characters, notes = build_characters([CharacterSlot(str(path), "Mia")], None)
    assert characters[0].image.mode == "RGB"
    return " ".join(notes)


def test_animated_gif_uses_first_frame(ctx, tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert "animated: its first frame is used" in _accepted_note(ctx, path)


def test_cmyk_is_converted(ctx, tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 128, 128, 0)).save(path)
    assert "CMYK: converted to RGB" in _accepted_note(ctx, path)


def test_16_bit_is_converted(ctx, tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(path)
    assert "16-bit: converted to 8-bit" in _accepted_note(ctx, path)


def test_alpha_is_filled_white(ctx, tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(path)
    assert "transparent areas are filled with white" in _accepted_note(ctx, path)


# ---------------------------------------------------------------------- prompt, masks, sizes
def test_no_prompt(ctx, no_models):
    assert error_of(run, ctx, prompt="   ") == "write a prompt first: describe the image to make"


def test_tag_naming_no_character(ctx, no_models, character_files):
    message = error_of(run, ctx, image1=str(character_files[0]), name1="Mia", prompt="[Bob] waves")
    assert message == "the prompt names [Bob], but no character has that name; characters: [Mia]"


def test_character_with_empty_mask(ctx, no_models, character_files):
    canvas = layout_canvas("Whole image", 1, 64, 64)  # only layer 1 painted
    message = error_of(run, ctx, image1=str(character_files[0]), name1="Mia", image2=str(character_files[1]),
                       name2="Bob", canvas=canvas, prompt="[Mia] and [Bob]")
    assert message.startswith(f"Character 2 [Bob] has an empty mask: paint on layer '{LAYER_NAMES[1]}'")


@pytest.mark.parametrize("width,message", [
    (1000, "width 1000 is not a multiple of 16: use 992 or 1008"),
    ("1000", "width 1000 is not a multiple of 16: use 992 or 1008"),
    (8, "width must be from 16 to 4096, got 8"),
    ("wide", "width must be a whole number from 16 to 4096, got 'wide'"),
])
def test_bad_size(ctx, no_models, width, message):
    assert error_of(run, ctx, width=width) == message


def test_name_without_image(ctx, no_models):
    assert "Character 1 [Mia] has a name but no image" in error_of(run, ctx, name1="Mia")


@pytest.mark.parametrize("seed,message", [
    (-3, "seed must be from 0 to 4294967295, got -3"),
    (10**30, "seed must be from 0 to 4294967295, got 1000000000000000000000000000000"),
    (2**32, "seed must be from 0 to 4294967295, got 4294967296"),
    (2.5, "seed must be a whole number from 0 to 4294967295, got 2.5"),
    ("lucky", "seed must be a whole number from 0 to 4294967295, got 'lucky'"),
])
def test_bad_seed(ctx, no_models, seed, message):
    assert error_of(run, ctx, seed=seed, randomize_seed=False) == message


def test_bad_lora_file(ctx, no_models, tmp_path):
    assert error_of(run, ctx, lora1_source="missing.safetensors").startswith("LoRA file not found")  # in loras/
    assert "is outside the folders this studio may use" in error_of(
        run, ctx, lora1_source=str(tmp_path / "missing.safetensors"))


# ---------------------------------------------------------------------- models failing to load
def test_models_missing(tmp_path):
    ctx = StudioContext(StudioSettings(models=str(tmp_path / "nowhere"), output_dir=tmp_path))
    assert error_of(run, ctx).startswith("models directory not found:")


def test_models_gated(tmp_path, monkeypatch):
    import httpx
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        raise GatedRepoError("403 gated", response=httpx.Response(403, request=httpx.Request("GET", "https://hf.co")))

    monkeypatch.setattr("huggingface_hub.snapshot_download", gated)
    ctx = StudioContext(StudioSettings(models="default", preset="full", output_dir=tmp_path))
    message = error_of(run, ctx)
    assert message.startswith("black-forest-labs/FLUX.1-dev is gated: accept its licence")


def test_models_out_of_memory(tmp_path, monkeypatch):
    from core.models.pipeline import InstantCharacterPipeline

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(InstantCharacterPipeline, "from_pretrained", oom)
    ctx = StudioContext(StudioSettings(models="default", preset="full", output_dir=tmp_path))
    assert error_of(run, ctx).startswith("Out of GPU memory with preset 'full'")


def test_unexpected_error_is_one_line(ctx, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(ctx, "engine", broken)
    message = error_of(run, ctx)
    assert message.startswith("Unexpected error (KeyError: 'boom')")


# ---------------------------------------------------------------------- recall, library, slots
def _in_outputs(ctx, name: str):
    """A path for a file named ``name`` in the studio's output folder (a Recall reads only the studio's folders)."""
    ctx.settings.output_dir.mkdir(parents=True, exist_ok=True)
    return ctx.settings.output_dir / name


def test_recall_of_foreign_png(ctx):
    path = _in_outputs(ctx, "plain.png")
    Image.new("RGB", (32, 32)).save(path)
    assert "carries no InstantCharacter Studio settings" in error_of(ev.GenerateEvents(ctx).recall, str(path))
    assert "pick a gallery image" in error_of(ev.GenerateEvents(ctx).recall, None)


def test_library_needs_name_and_image(ctx, character_files):
    from app.tabs.library import LibraryEvents

    events = LibraryEvents(ctx)
    assert error_of(events.save, None, "Mia", 0.9) == "add a character image before saving it to the library"
    assert error_of(events.save, str(character_files[0]), " ", 0.9) == \
        "give the character a name before saving it to the library"
    assert error_of(events.delete, "") == "select a character in the library first"


def test_insert_tag_needs_a_name():
    assert ev.insert_tag("a cat", "Mia", 1) == "a cat [Mia]"
    assert error_of(ev.insert_tag, "a cat", "", 2).startswith("give Character 2 a name first")


def test_slots_limit_and_reorder(character_files):
    with pytest.warns(UserWarning, match=f"At most {MAX_STUDIO_CHARACTERS} characters fit in one image"):
        updates = ev.add_slot(MAX_STUDIO_CHARACTERS)  # the page's notice (gr.Warning) at the limit
    assert updates[-1] == MAX_STUDIO_CHARACTERS
    values = [str(character_files[0]), "Mia", 0.5, False, "a girl", str(character_files[1]), "Bob", 1.2, True,
              "a robot"] + [None, "", 0.9, False, ""] * 2
    canvas = layout_canvas("Left / right", 2, 64, 64)
    remove, move_up = ev.slot_handlers(1)
    moved = move_up(2, canvas, 64, 64, *values)
    assert moved[:10] == values[5:10] + values[:5]  # descriptions move with their characters
    left = np.asarray(moved[-1]["layers"][1].getchannel("A"))  # Mia's left half moved to layer 2
    assert left[:, :10].min() == 255 and left[:, -10:].max() == 0
    removed = remove(2, canvas, 64, 64, *values)
    assert removed[:5] == values[:5] and removed[5] is None and removed[9] == "" and removed[-2] == 1


def test_layout_and_size_follow(ctx):
    canvas = ev.apply_layout("Thirds", 3, 1344, 768)
    assert canvas["background"].size == (512, 293)
    assert [np.asarray(layer.getchannel("A")).mean() > 0 for layer in canvas["layers"]] == [True, True, True, False]
    resized = ev.follow_size(canvas, 768, 1344)
    assert resized["background"].size == (293, 512)
    assert ev.follow_size(canvas, 1, 64) == gr.update()  # half-typed sizes leave the canvas alone
    # a size of the same aspect ratio (a preset's 1024 after 128) leaves it alone too: nothing for the page to redraw
    assert ev.follow_size(resized, 1536, 2688) == gr.update()
    assert error_of(ev.apply_layout, "Spiral", 2, 64, 64).startswith("unknown layout 'Spiral'")


def test_settings_messages(ctx, tmp_path):
    from app.tabs.settings import SettingsEvents

    events = SettingsEvents(ctx)
    assert error_of(events.apply, "", "", "", "", "", "auto", "").startswith("model sources are empty")
    assert error_of(events.apply, str(tmp_path / "x"), "", "", "", "", "auto", "").startswith("models folder not found")
    assert error_of(events.apply, "tiny", "", "", "", "", "huge", "").startswith("unknown memory preset 'huge'")
    long_name = error_of(events.apply, "tiny", "", "", "", "", "x" * 5000, "")  # a client's value, clipped
    assert long_name.startswith("unknown memory preset 'xxx") and "...: choose one of" in long_name
    assert len(long_name) < 300
    status, _ = events.apply("tiny", "", "", "", "", "full", str(tmp_path / "new-out"))
    assert ctx.settings.output_dir == tmp_path / "new-out" and "not loaded" in status


def test_blank_canvas_means_no_masks(ctx, character_files):
    from app.generation import CharacterSlot, build_characters

    slots = [CharacterSlot(str(character_files[0]), "Mia"), CharacterSlot(str(character_files[1]), "Bob")]
    characters, notes = build_characters(slots, blank_canvas(64, 64))
    assert [c.mask for c in characters] == [None, None] and notes == []


def test_mask_layers_carry_the_character_names(ctx):
    """The canvas's layers are the named, colour-coded character layers. Gradio's editor names every layer image it
    loads from a value "Layer 1", so canvases with nothing painted send no layer images (the browser keeps its named
    layers) and the page loads a script that names layers loaded from a value in order."""
    from app.mask_canvas import CANVAS_JS, COLOURS
    from app.studio import build_studio

    demo = build_studio(ctx)
    canvas = demo.studio_tabs["generate"].canvas
    config = canvas.get_config()
    assert config["layers"]["layers"] == LAYER_NAMES and config["layers"]["allow_additional_layers"] is False
    assert [name.split("(")[1].rstrip(")") for name in LAYER_NAMES] == ["red", "blue", "green", "orange"]
    assert config["brush"]["colors"] == [f"rgb{c}" for c in COLOURS]  # layer i's colour is brush colour i
    assert config["value"]["layers"] == []  # the initial value leaves the named layers alone
    assert blank_canvas(64, 64)["layers"] == [] and ev.clear_canvas(64, 64)["layers"] == []
    assert ev.follow_size(blank_canvas(64, 64), 96, 64)["layers"] == []
    assert len(layout_canvas("Left / right", 2, 64, 64)["layers"]) == MAX_STUDIO_CHARACTERS  # one per slot, in order
    page = demo.get_config_file()
    assert any(CANVAS_JS.strip() in str(dep.get("js") or "") for dep in page["dependencies"])


# ---------------------------------------------------------------------- limits (core/limits.py)
@pytest.mark.parametrize("fields,message", [
    (dict(steps=10**30), "steps must be from 1 to 100, got 1000000000000000000000000000000"),
    (dict(steps="many"), "steps must be a whole number from 1 to 100, got 'many'"),
    (dict(steps=2.5), "steps must be a whole number from 1 to 100, got 2.5"),
    (dict(images=5), "images per run must be from 1 to 4, got 5"),
    (dict(prompt="x" * 4001), "the prompt is 4,001 characters long: the limit is 4,000"),
    (dict(negative_prompt="x" * 4001), "the negative prompt is 4,001 characters long: the limit is 4,000"),
    (dict(width=float("inf")), "width must be a whole number from 16 to 4096, got inf"),
    (dict(width=float("nan")), "width must be a whole number from 16 to 4096, got nan"),
    (dict(height=1e30), "height must be from 16 to 4096, got 1000000000000000019884624838656"),
    (dict(guidance=31), "guidance must be from 0 to 30, got 31"),
    (dict(true_cfg_scale=0.5), "true CFG scale (1 turns it off) must be from 1 to 20, got 0.5"),
    (dict(true_cfg_scale="x"), "true CFG scale (1 turns it off) must be a number from 1 to 20, got 'x'"),
])
def test_settings_are_bounded(ctx, no_models, fields, message):
    assert error_of(run, ctx, **fields) == message


def test_character_limits(ctx, no_models, character_files, tmp_path):
    from tests.core.crafted_png import bilevel_png

    mia = str(character_files[0])
    assert error_of(run, ctx, image1=mia, scale1=2.5) == "character image: scale must be from 0 to 2, got 2.5"
    assert error_of(run, ctx, image1=mia, name1="Mia", scale1=2.5) == "character 'Mia': scale must be from 0 to 2, got 2.5"
    assert error_of(run, ctx, image1=mia, name1="N" * 65).endswith("must be 1-64 characters without brackets or "
                                                                     "line breaks")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bilevel_png(30000, 30000, pixels=False))
    assert error_of(run, ctx, image1=str(bomb)) == \
        "Character 1 is far over the 40 megapixel limit: refused before decoding"
    canvas = layout_canvas("Grid 2x2", 4, 64, 64)
    canvas["layers"].append(canvas["layers"][0])
    assert error_of(run, ctx, image1=mia, canvas=canvas) == \
        "the mask canvas has 5 layers: it holds one per character, at most 4"


def test_cancel_stops_a_running_run_and_drops_a_queued_one(ctx):
    """Cancel runs outside the queue and never kills the Generate handler (it returns one step later, freeing the
    queue); a run still waiting is dropped when its turn comes; the button reads "Cancelling..." meanwhile."""
    from app.studio import build_studio

    demo = build_studio(ctx)
    ui = demo.studio_tabs["generate"]
    config = demo.get_config_file()["dependencies"]
    [cancel] = [d for d in config if d.get("api_name") == "cancel"]
    assert cancel["targets"] == [(ui.cancel._id, "click")] and cancel["queue"] is False
    assert all(not d["cancels"] for d in config if d["targets"] == cancel["targets"])

    events = ev.GenerateEvents(ctx)
    shown = []
    gr_info = gr.Info
    try:
        gr.Info = shown.append
        assert events.cancel(None)["value"] == "Nothing to cancel: it had finished"  # said on the button
        started = time.monotonic()
        assert events.wait_until_stopped(None)["value"] == "Cancel"  # and back after a moment
        assert time.monotonic() - started >= 1.5
        events.runs.queued("local")
        assert events.cancel(None)["value"] == "Cancelling..."
        assert events.runs.start("local") is None  # dropped before it started
        events.runs.queued("local")
        running = events.runs.start("local")
        assert events.cancel(None)["value"] == "Cancelling..."
    finally:
        gr.Info = gr_info
    assert shown == ["Nothing is running in this tab", "Cancelled before it started",
                     "Cancelling: stops at the next step"]
    assert running.is_set()
    events.runs.finish("local", running)
    assert events.wait_until_stopped(None)["value"] == "Cancel"


# ---------------------------------------------------------------------- Recall of crafted files
def _recall_file(ctx, settings, name="crafted.png") -> str:
    from tests.core.crafted_png import png_with_settings

    path = _in_outputs(ctx, name)
    path.write_bytes(png_with_settings(settings))
    return str(path)


@pytest.mark.parametrize("fields,message", [
    (dict(seed=10**30), "seed must be from 0 to 4294967295, got 1000000000000000000000000000000"),
    (dict(width=0), "width must be from 16 to 4096, got 0"),
    (dict(num_inference_steps=-1), "num_inference_steps must be from 1 to 100, got -1"),
    (dict(guidance_scale="3.5"), "guidance_scale must be a number from 0 to 30, got '3.5'"),
    (dict(characters=[{"image": "x"}] * 9), "9 characters given: at most 8"),
])
def test_recall_of_junk_settings(ctx, fields, message):
    from tests.core.crafted_png import record

    got = error_of(ev.GenerateEvents(ctx).recall, _recall_file(ctx, record(**fields)))
    assert got == f"the image's settings are not usable: {message}"


def test_recall_of_deep_json_and_bad_images(ctx):
    from tests.core.crafted_png import b64, record

    recall = ev.GenerateEvents(ctx).recall
    assert error_of(recall, _recall_file(ctx, "[" * 50_000)) == \
        "the image's settings nest deeper than 8 levels"
    notes = b64(b"plain text")
    assert error_of(recall, _recall_file(ctx, record(characters=[{"image": notes}]))) == \
        "character 1's image is not an image file Pillow can read"
    good = b64(_png_bytes(Image.new("RGB", (32, 32))))
    assert error_of(recall, _recall_file(ctx, record(characters=[{"image": good, "mask": "png:" + notes}]))) == \
        "character 1's mask is not an image file Pillow can read"


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _peak_rss_during(fn):
    """``(result, seconds, peak MB above the starting RSS)``; the peak is reset first (Linux /proc)."""
    import time

    def rss(key):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith(key))

    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM, the peak resident size, to the current one
    except OSError:
        pytest.skip("needs /proc/self/clear_refs to measure peak memory")
    start, began = rss("VmRSS"), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began, rss("VmHWM") - start


def test_recall_of_a_small_png_with_huge_masks_is_bounded(ctx):
    """A few hundred bytes of PNG whose settings hold four 36-megapixel 1-bit images and masks (they deflate
    1000:1). Recall used to decode all of them to RGB images and float masks (gigabytes, tens of seconds); now
    images go to their boxes as files without being decoded, and masks are decoded one at a time, scaled down to
    MAX_SIDE x MAX_SIDE before they become floats."""
    from tests.core.crafted_png import b64, bilevel_png, record

    side = 6000
    image, mask = b64(bilevel_png(side, side)), "png:" + b64(bilevel_png(side, side))
    characters = [{"image": image, "name": f"C{i}", "mask": mask} for i in range(MAX_STUDIO_CHARACTERS)]
    path = _recall_file(ctx, record(characters=characters, width=1024, height=1024))
    assert _in_outputs(ctx, "crafted.png").stat().st_size < 2000
    values, seconds, peak_mb = _peak_rss_during(lambda: ev.GenerateEvents(ctx).recall(path))
    recalled = dict(zip(ev.RECALL_FIELDS, values, strict=True))
    assert Image.open(recalled["image1"]).size == (side, side)  # the recorded file itself, never decoded here
    assert len(recalled["canvas"]["layers"]) == MAX_STUDIO_CHARACTERS
    assert peak_mb < 300 and seconds < 15, (peak_mb, seconds)  # measured: about 215 MB and 1.3 s

    # past the pixel limit, nothing is decoded at all
    huge = "png:" + b64(bilevel_png(30000, 30000, pixels=False))
    path = _recall_file(ctx, record(characters=[{"image": image, "mask": huge}]), "huge.png")
    message, seconds, peak_mb = _peak_rss_during(lambda: error_of(ev.GenerateEvents(ctx).recall, path))
    assert message == "character 1's mask is far over the 40 megapixel limit: refused before decoding"
    assert peak_mb < 50 and seconds < 2, (peak_mb, seconds)


def test_bomb_upload_reaches_the_handler_as_a_path(tmp_path):
    """Stock gr.Image opens every upload with Pillow, which raises DecompressionBombError for a 900-megapixel
    header; the character box hands the file to the handler, whose message says what is wrong."""
    from gradio.data_classes import ImageData

    from app.components import CharacterImage
    from tests.core.crafted_png import bilevel_png

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bilevel_png(30000, 30000, pixels=False))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    box = CharacterImage(type="filepath", image_mode=None, format="png")
    assert box.preprocess(ImageData(path=str(bomb), orig_name="bomb.png")) == str(bomb)
