"""The studio's descriptions and Regional text choice: they reach the request and the PNG, Recall restores them,
and a bad choice sent over the protocol is one line."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file

from app.context import StudioContext, StudioSettings
from app.errors import StudioInputError
from app.generation import build_request, generate
from app.mask_canvas import layout_canvas
from app.tabs import generate_events as ev
from core.io.metadata import read_record


def _form(character_files, **extra):
    values = dict(image1=str(character_files[0]), name1="Mia", description1="a girl in a red coat",
                  image2=str(character_files[1]), name2="Bob", description2="  a tall   robot ",
                  canvas=layout_canvas("Left / right", 2, 64, 48), prompt="[Mia] talks to [Bob] on a pier", steps=2,
                  width=64, height=48, seed=5, randomize_seed=False)
    values.update(extra)
    return values


@pytest.mark.parametrize("mode", ["off", "on", "auto"])
def test_descriptions_and_the_choice_reach_the_png_and_come_back_with_recall(tiny_models, tmp_path,
                                                                             character_files, mode):
    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"))
    slots, canvas, fields = ev.parse_form(ev.form_values(**_form(character_files, regional_text=mode)), ctx)
    result = generate(ctx, *build_request(slots, canvas, fields))
    record = read_record(result.paths[0])
    assert [c.description for c in record.characters] == ["a girl in a red coat", "a tall robot"]
    assert record.regional_text["mode"] == mode
    assert any("regional text" in n for n in result.notes) == (mode != "off")
    values, specs = ev.GenerateEvents(ctx)._recall_values(result.paths[0])
    recalled = dict(zip(ev.RECALL_FIELDS, values, strict=True))
    assert recalled["regional_text"] == mode
    assert (recalled["description1"], recalled["description2"]) == ("a girl in a red coat", "a tall robot")
    form = {k: v for k, v in recalled.items() if k in ev.GENERATE_FIELDS}
    again, _ = build_request(*ev.parse_form(ev.form_values(**form), ctx), specs)
    first, _ = build_request(slots, canvas, fields)
    assert again.summary() == first.summary()


def test_a_bad_choice_is_one_line(character_files):
    slots, canvas, fields = ev.parse_form(ev.form_values(**_form(character_files, regional_text="sometimes")))
    with pytest.raises(Exception) as info:
        build_request(slots, canvas, fields)
    assert str(info.value) == "regional text 'sometimes': use one of auto, on, off"
    with pytest.raises(StudioInputError, match="regional text must be auto, on or off, got 3"):
        ev.parse_form(ev.form_values(**_form(character_files, regional_text=3)))


def test_the_protocol_refuses_a_bad_choice_in_one_line(studio, character_files, tmp_path):
    from tests.app.test_studio_app import canvas_payload

    _, _, url = studio
    client = Client(url, verbose=False)
    form = _form(character_files, image1=handle_file(str(character_files[0])),
                 image2=handle_file(str(character_files[1])), regional_text="sometimes")
    form["canvas"] = canvas_payload(form["canvas"], tmp_path)
    with pytest.raises(Exception) as info:
        client.predict(*ev.form_values(**form), api_name="/generate")
    # Gradio's radio refuses a value outside its choices before the handler, in one line: as the join's detail (the
    # GPU events' admission check runs at the join) or, for an event without one, as the event's error
    response = getattr(info.value, "response", None)
    message = str(response.json().get("detail")) if response is not None else str(info.value)
    assert "'sometimes'" in message and "not in the list of choices" in message, message
    assert len(message.strip().splitlines()) == 1
    form["regional_text"] = "off"
    assert client.predict(*ev.form_values(**form), api_name="/generate")[0]  # the studio still serves
