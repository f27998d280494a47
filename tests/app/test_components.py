"""The studio's own Gradio components: what they send the browser and what they make of what comes back."""

from __future__ import annotations

import os
import threading

import gradio as gr
import pytest
from gradio.data_classes import FileData
from PIL import Image

from app.components import Canvas
from app.mask_canvas import blank_canvas, layout_canvas


def test_canvas_sends_the_same_image_again_without_rewriting_it(tmp_path, monkeypatch):
    """Stock ``gr.ImageEditor`` rewrites the same cached file in place each time the same canvas is sent again (the
    routing canvas is, on every size change), so a browser fetching it meanwhile could read it cut off. A reader
    that reads the file while the canvas is sent again 300 times sees it whole every time, and the file is the
    same one (written once)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    canvas = Canvas(type="pil", format="png")
    value = layout_canvas("Left / right", 2, 1024, 768)
    first = canvas.postprocess(value)
    path = first.background.path
    assert path.startswith(str(tmp_path)) and Image.open(path).size == value["background"].size
    written = (Image.open(path).tobytes(), [Image.open(layer.path).tobytes() for layer in first.layers])
    assert written[1] and all(layer for layer in written[1])
    inode = os.stat(path).st_ino
    size = os.stat(path).st_size

    stop, short = threading.Event(), []

    def read():
        while not stop.is_set():
            data = open(path, "rb").read()
            if len(data) != size:
                short.append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(300):
            again = canvas.postprocess(layout_canvas("Left / right", 2, 1024, 768))
    finally:
        stop.set()
        reader.join()
    assert short == [], f"the reader saw the file cut off {len(short)} times"
    assert again.background.path == path and os.stat(path).st_ino == inode
    assert Image.open(again.layers[0].path).tobytes() == written[1][0]


def test_canvas_images_stay_images_of_the_value(tmp_path, monkeypatch):
    """What the browser gets is the value's own pixels (background, layers, composite), as PNG files."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    value = layout_canvas("Top / bottom", 2, 640, 960)
    sent = Canvas(type="pil", format="png").postprocess(value)
    assert Image.open(sent.background.path).tobytes() == value["background"].tobytes()
    assert Image.open(sent.composite.path).tobytes() == value["composite"].tobytes()
    assert [Image.open(f.path).tobytes() for f in sent.layers] == [layer.tobytes() for layer in value["layers"]]
    assert Canvas(type="pil").postprocess(None) is None


def test_canvas_that_comes_back_unreadable_says_so(tmp_path):
    """A browser that sends the canvas while still drawing it can send an empty background (seen in a real
    browser before the fix above): the message says what happened and what to do, not Gradio's generic one."""
    from gradio.components.image_editor import EditorData

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
