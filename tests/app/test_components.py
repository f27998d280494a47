"""The studio's own Gradio components: what they send the browser and what they make of what comes back."""

from __future__ import annotations

import os
import threading

import gradio as gr
import pytest
from gradio.components.image_editor import EditorData
from gradio.data_classes import FileData
from PIL import Image

from app.components import Canvas, OutputGallery, OutputImage
from app.mask_canvas import blank_canvas, layout_canvas
from app.tabs.train import loss_plot


def _sent_paths(sent) -> list[str]:
    """The file paths in what a component's postprocess returned (editor data, image data or gallery data)."""
    if isinstance(sent, EditorData):
        return [sent.background.path, *(layer.path for layer in sent.layers), sent.composite.path]
    if hasattr(sent, "root"):  # a gallery
        return [item.image.path for item in sent.root]
    return [sent.path]


SENT_AGAIN = {  # what each studio component sends again unchanged: the canvas on a size change, the loss plot
    # on each poll, the story's page previews on each edit
    "canvas": (lambda: Canvas(type="pil", format="png"), lambda: layout_canvas("Left / right", 2, 1024, 768)),
    "loss plot": (lambda: OutputImage(type="pil"), lambda: loss_plot([1.0, 0.8, 0.7, 0.65])),
    "page previews": (lambda: OutputGallery(), lambda: [blank_canvas(640, 960)["background"].convert("RGB")] * 2),
}


@pytest.mark.parametrize("name", SENT_AGAIN)
def test_an_image_sent_again_is_not_rewritten(name, tmp_path, monkeypatch):
    """A stock component rewrites the same cached file in place each time the same image is sent again, so a
    browser fetching it meanwhile could read it cut off (the stock components fail this test). A reader that
    reads the files while the value is sent again 200 times sees them whole every time, and they are the same
    files (written once)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    make_component, make_value = SENT_AGAIN[name]
    component = make_component()
    paths = _sent_paths(component.postprocess(make_value()))
    assert all(p.startswith(str(tmp_path)) for p in paths)
    before = {p: (os.stat(p).st_ino, os.stat(p).st_size) for p in paths}

    stop, short = threading.Event(), []

    def read():
        while not stop.is_set():
            for p, (_, size) in before.items():
                data = open(p, "rb").read()
                if len(data) != size:
                    short.append((p, len(data)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            again = _sent_paths(component.postprocess(make_value()))
    finally:
        stop.set()
        reader.join()
    assert short == [], f"the reader saw a file cut off {len(short)} times"
    assert again == paths and {p: (os.stat(p).st_ino, os.stat(p).st_size) for p in paths} == before


def test_images_sent_are_the_values_pixels(tmp_path, monkeypatch):
    """What the browser gets is the value's own pixels, in the component's format (the canvas's PNG: background,
    layers and composite), and the values that are not images pass through."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    value = layout_canvas("Top / bottom", 2, 640, 960)
    sent = Canvas(type="pil", format="png").postprocess(value)
    assert Image.open(sent.background.path).tobytes() == value["background"].tobytes()
    assert Image.open(sent.composite.path).tobytes() == value["composite"].tobytes()
    assert [Image.open(f.path).tobytes() for f in sent.layers] == [layer.tobytes() for layer in value["layers"]]
    assert Canvas(type="pil").postprocess(None) is None
    plot = loss_plot([1.0, 0.5])
    shown = OutputImage(type="pil", format="png").postprocess(plot)
    assert shown.path.endswith(".png") and Image.open(shown.path).tobytes() == plot.tobytes()
    assert OutputImage(type="pil").postprocess(None) is None
    gallery = OutputGallery().postprocess([(plot, "page 1")])
    assert gallery.root[0].caption == "page 1" and gallery.root[0].image.path.endswith(".webp")


def test_canvas_that_comes_back_unreadable_says_so(tmp_path):
    """A browser that sends the canvas while still drawing it can send an empty background (seen in a real
    browser before the fix above): the message says what happened and what to do, not Gradio's generic one."""
    empty = tmp_path / "background.png"
    empty.write_bytes(b"")
    good = tmp_path / "layer_0.png"
    blank_canvas(64, 64)["background"].save(good)
    canvas = Canvas(type="pil", format="png", label="Routing masks")
    payload = EditorData(background=FileData(path=str(empty)), layers=[FileData(path=str(good))],
                         composite=FileData(path=str(empty)))
    with pytest.raises(gr.Error) as raised:
        canvas.preprocess(payload)
    assert raised.value.message == ("The canvas 'Routing masks' came with an image that cannot be read: wait until it "
                                    "shows its image, then try again (upload the image again if it stays empty)")
    assert str(raised.value) == raised.value.message  # a refused queue join shows str(), unquoted


def test_components_use_gradios_own_front_ends():
    """Each studio component is drawn by its Gradio parent's front end (Gradio picks it by the class's first base)."""
    from app.components import CharacterImage

    names = [c().get_block_name() for c in (CharacterImage, OutputImage, OutputGallery, Canvas)]
    assert names == ["image", "image", "gallery", "imageeditor"]


def test_the_studio_draws_images_through_its_own_components(tmp_path):
    """Every canvas of the built studio is a :class:`Canvas`, and every image box that shows a PIL image the studio
    draws is an :class:`OutputImage`: none is left on the stock component that rewrites its files in place."""
    from app.context import StudioContext, StudioSettings
    from app.studio import build_studio

    demo = build_studio(StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out")))
    blocks = list(demo.blocks.values())
    editors = [b for b in blocks if isinstance(b, gr.ImageEditor)]
    assert len(editors) == 2 and all(isinstance(b, Canvas) for b in editors)
    drawn = [b for b in blocks if isinstance(b, gr.Image) and b.type == "pil"]
    assert drawn and all(isinstance(b, OutputImage) for b in drawn), [b.label for b in drawn]
