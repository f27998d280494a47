"""Regional text in a request: pipeline keywords, PNG records and Recall."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from core.conditioning.character import Character
from core.conditioning.regional_text import RegionalText
from core.io.metadata import GenerationRecord, MetadataError, save_png
from core.request import GenerationRequest, request_from_png


def _two():
    return [Character(Image.new("RGB", (16, 16), (200, 0, 0)), name="Red", mask="left", description="a red fox"),
            Character(Image.new("RGB", (16, 16), (0, 0, 200)), name="Blue", mask="right")]


@pytest.mark.parametrize("setting", ["off", "on", RegionalText("on", steps=0.25, blocks="alternate", base_ratio=0.2),
                                     "auto"])
def test_recall_restores_the_setting(tmp_path, setting):
    request = GenerationRequest("[Red] and [Blue] on a pier", characters=_two(), seed=5, regional_text=setting)
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "out.png", request.to_record())
    recalled = request_from_png(path)
    assert recalled.regional_text == RegionalText.parse(setting)
    assert recalled.summary() == request.summary()
    assert recalled.characters[0].description == "a red fox"


def test_the_default_leaves_the_pipeline_call_and_a_plain_record_as_before():
    plain = GenerationRequest("a pier", seed=1)
    assert "regional_text" not in plain.pipeline_kwargs()
    assert "regional_text" not in json.loads(plain.to_record().to_json())
    off = GenerationRequest("[Red] and [Blue]", characters=_two(), seed=1, regional_text="off")
    assert off.pipeline_kwargs()["regional_text"] == RegionalText("off")


def test_a_record_of_characters_from_before_regional_text_is_recalled_off():
    record = GenerationRequest("[Red] and [Blue]", characters=_two(), seed=1).to_record()
    data = json.loads(record.to_json())
    del data["regional_text"]
    recalled = GenerationRequest.from_record(GenerationRecord.from_json(json.dumps(data)))
    assert recalled.regional_text.mode == "off"


def test_a_bad_recorded_setting_is_one_line():
    data = json.loads(GenerationRequest("[Red] and [Blue]", characters=_two(), seed=1).to_record().to_json())
    data["regional_text"] = {"mode": "on", "steps": 3}
    with pytest.raises(MetadataError) as info:
        GenerationRecord.from_json(json.dumps(data))
    assert str(info.value) == ("the image's settings are not usable: regional text steps 3: must be a number "
                               "from 0 to 1")
