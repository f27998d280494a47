"""The API a script uses: /generate (and /edit) with named parameters, every character slot optional, called by
keyword through gradio_client as the README shows."""

from __future__ import annotations

from gradio_client import Client, handle_file

from core.io.metadata import read_record


def test_generate_takes_named_parameters_and_optional_slots(studio, character_files):
    _, demo, url = studio
    info = demo.get_api_info()["named_endpoints"]
    for endpoint in ("/generate", "/edit"):
        parameters = info[endpoint]["parameters"]
        names = [p["parameter_name"] for p in parameters]
        assert not [n for n in names if n.startswith("param_")], names
        assert all(p["parameter_has_default"] for p in parameters), endpoint
        assert names[:4] == ["image1", "name1", "scale1", "remove_background1"] and "prompt" in names
    # the README's example, as written there
    client = Client(url, verbose=False)
    gallery, notes, seed = client.predict(
        image1=handle_file(str(character_files[0])), name1="Ann",
        prompt="a photo of [Ann] in a park", steps=2, width=64, height=64, seed=7, randomize_seed=False,
        api_name="/generate")
    record = read_record(gallery[0]["image"])
    assert (record.prompt, record.seed, record.width, [c.name for c in record.characters]) == (
        "a photo of [Ann] in a park", 7, 64, ["Ann"])
    assert seed == 7
