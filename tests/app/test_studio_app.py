"""The launched studio on tiny models, driven through gradio_client: generations, Recall, and 8 clients at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client, handle_file

from app.mask_canvas import layout_canvas
from app.tabs.generate_events import RECALL_FIELDS, form_values
from PIL import Image

from core.conditioning.masks import RoutingMask
from core.io.metadata import read_record

# Recall's API outputs leave out the row visibility and the row count (not values a client can hold)
RECALL_API_FIELDS = [f for f in RECALL_FIELDS if not f.startswith("visible") and f != "count"]


def gallery_paths(result) -> list[str]:
    return [item["image"] for item in result[0]]


def canvas_payload(canvas, folder) -> dict:
    files = {}
    for key in ("background", "composite"):
        canvas[key].save(folder / f"{key}.png")
        files[key] = handle_file(str(folder / f"{key}.png"))
    layers = []
    for i, layer in enumerate(canvas["layers"]):
        layer.save(folder / f"layer{i}.png")
        layers.append(handle_file(str(folder / f"layer{i}.png")))
    return {**files, "layers": layers}


def test_one_character_round_trips_through_recall(studio, character_files):
    ctx, _, url = studio
    client = Client(url, verbose=False)
    values = form_values(image1=handle_file(str(character_files[0])), name1="Mia", scale1=0.7,
                         prompt="a photo of [Mia]", negative_prompt="blurry", true_cfg_scale=1.5, steps=2,
                         width=64, height=48, seed=1234, randomize_seed=False)
    result = client.predict(*values, api_name="/generate")
    [path] = gallery_paths(result)
    record = read_record(path)
    assert (record.prompt, record.seed, record.width, record.height) == ("a photo of [Mia]", 1234, 64, 48)
    assert (record.negative_prompt, record.true_cfg_scale, record.num_inference_steps) == ("blurry", 1.5, 2)
    assert [(c.name, c.scale, c.mask) for c in record.characters] == [("Mia", 0.7, None)]
    assert result[2] == 1234

    recalled = dict(zip(RECALL_API_FIELDS, client.predict(handle_file(path), api_name="/recall"), strict=True))
    assert (recalled["prompt"], recalled["seed"], recalled["width"], recalled["height"]) == ("a photo of [Mia]", 1234,
                                                                                             64, 48)
    assert recalled["name1"] == "Mia" and recalled["scale1"] == 0.7 and recalled["randomize_seed"] is False
    # the recalled values generate the same image again
    again = {k: recalled[k] for k in ("prompt", "negative_prompt", "true_cfg_scale", "steps", "guidance", "width",
                                      "height", "seed", "randomize_seed", "name1", "scale1")}
    second = client.predict(*form_values(image1=handle_file(recalled["image1"]), **again), api_name="/generate")
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(gallery_paths(second)[0])))


def test_two_characters_with_masks(studio, character_files, tmp_path):
    ctx, _, url = studio
    client = Client(url, verbose=False)
    canvas = layout_canvas("Left / right", 2, 96, 64)
    values = form_values(image1=handle_file(str(character_files[0])), name1="Mia",
                         image2=handle_file(str(character_files[1])), name2="Bob", scale2=1.2,
                         canvas=canvas_payload(canvas, tmp_path), prompt="[Mia] talks to [Bob]", steps=2,
                         width=96, height=64, seed=77, randomize_seed=False, images=2)
    result = client.predict(*values, api_name="/generate")
    paths = gallery_paths(result)
    assert len(paths) == 2
    records = [read_record(p) for p in paths]
    assert [r.seed for r in records] == [77, 78]
    masks = [RoutingMask.from_json(c.mask).weights(4, 6).reshape(4, 6) for c in records[0].characters]
    assert masks[0][:, :3].min() == 1 and masks[0][:, 3:].max() == 0  # Mia left
    assert masks[1][:, 3:].min() == 1 and masks[1][:, :3].max() == 0  # Bob right
    assert [c.scale for c in records[0].characters] == [0.9, 1.2]

    recalled = dict(zip(RECALL_API_FIELDS, client.predict(handle_file(paths[0]), api_name="/recall"), strict=True))
    assert [recalled["name1"], recalled["name2"]] == ["Mia", "Bob"]
    layers = [np.asarray(Image.open(p).getchannel("A")) for p in recalled["canvas"]["layers"]]
    assert layers[0][:, :10].min() == 255 and layers[0][:, -10:].max() == 0
    assert layers[1][:, -10:].min() == 255 and layers[2].max() == 0
    assert len(ctx.history.entries()) >= 2


@pytest.mark.slow
def test_eight_clients_at_once(studio, character_files):
    ctx, _, url = studio

    def one(k: int):
        client = Client(url, verbose=False)
        values = form_values(image1=handle_file(str(character_files[k % 2])), name1=f"C{k}", prompt=f"[C{k}] number {k}",
                             steps=1, width=32, height=32, seed=1000 + k, randomize_seed=False)
        return k, gallery_paths(client.predict(*values, api_name="/generate"))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for k, paths in results:
        assert len(paths) == 1, f"client {k} got {paths}"
        record = read_record(paths[0])
        assert (record.prompt, record.seed, record.characters[0].name) == (f"[C{k}] number {k}", 1000 + k, f"C{k}")


def test_a_canvas_sent_while_still_drawing_is_named(studio, character_files, tmp_path):
    """A browser that sends the routing canvas before it has drawn it sends an empty background file: Generate
    is refused when it joins the queue, with a message that says which canvas could not be read and what to do;
    it runs once the canvas comes whole."""
    import httpx

    _, _, url = studio
    client = Client(url, verbose=False)
    drawn = layout_canvas("Left / right", 1, 64, 64)
    (tmp_path / "empty.png").write_bytes(b"")
    broken = {**canvas_payload(drawn, tmp_path), "background": handle_file(str(tmp_path / "empty.png"))}
    fields = dict(image1=handle_file(str(character_files[0])), name1="Mia", prompt="[Mia]", steps=1, width=32,
                  height=32, seed=7, randomize_seed=False)
    with pytest.raises(httpx.HTTPStatusError) as raised:
        client.predict(*form_values(canvas=broken, **fields), api_name="/generate")
    assert raised.value.response.status_code == 400
    assert raised.value.response.json() == {"detail": (
        "The canvas 'Routing masks' came with an image that cannot be read: wait until it shows its image, then try "
        "again (upload the image again if it stays empty)")}
    whole = canvas_payload(drawn, tmp_path)
    assert len(gallery_paths(client.predict(*form_values(canvas=whole, **fields), api_name="/generate"))) == 1
