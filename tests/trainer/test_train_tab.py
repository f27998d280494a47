"""The Train tab's handlers are plain functions of values; the tab builds inside a Blocks page."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import pytest

from app.errors import StudioInputError
from app.tabs import train as tab
from core.io.path_policy import PathNotAllowedError
from trainer.config import load_config


def test_build_save_and_reject_config(tmp_path):
    text = tab.build_config_text("48gb", "tiny", "run", str(tmp_path / "u"), "", 0.001, 0)
    path = tmp_path / "c.toml"
    status = tab.save_config_text(text, "c.toml", tmp_path)
    assert "1 stage(s)" in status  # no paired data: only the unpaired stage is kept
    assert load_config(path).models.source == "tiny"
    with pytest.raises(StudioInputError, match="resolution"):
        tab.save_config_text(text.replace("resolution = 512", "resolution = 500"), str(path), tmp_path)
    assert load_config(path).stages[0].resolution == 512  # the bad edit did not replace the good file


@pytest.mark.parametrize("name", ["/tmp/elsewhere.toml", "../escape.toml", "sub/../../escape.toml"])
def test_configs_stay_in_the_runs_folder(tmp_path, name):
    runs = tmp_path / "runs"
    runs.mkdir()
    text = tab.build_config_text("48gb", "tiny", "run", str(tmp_path / "u"), "", 0.001, 0)
    with pytest.raises(PathNotAllowedError, match="outside the folders"):
        tab.save_config_text(text, name, runs)
    with pytest.raises(PathNotAllowedError, match="outside the folders"):
        tab.read_config_text(name, runs)
    assert not (tmp_path / "escape.toml").exists()


def test_config_output_must_stay_in_the_runs_folder(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for output in ("/", str(tmp_path / "outside"), "../outside"):
        text = tab.build_config_text("48gb", "tiny", output, str(tmp_path / "u"), "", 0.001, 0)
        with pytest.raises(PathNotAllowedError, match="output_dir"):
            tab.save_config_text(text, "c.toml", runs)
    assert not (runs / "c.toml").exists() and not (tmp_path / "outside").exists()


def test_config_load_refuses_non_configs(tmp_path):
    with pytest.raises(StudioInputError, match="must end in .toml"):
        tab.read_config_text("notes.txt", tmp_path)
    with pytest.raises(StudioInputError, match="no config named"):
        tab.read_config_text("missing.toml", tmp_path)


def test_train_handlers_are_owner_only(tmp_path):
    from app.context import Access

    ctx = SimpleNamespace(settings=SimpleNamespace(models="tiny"), runs_dir=tmp_path,
                          access=Access(exposed=True, owner="ann", why="open to the network (0.0.0.0)"))
    events = tab.TrainEvents(ctx)
    text = tab.build_config_text("48gb", "tiny", "run", str(tmp_path / "u"), "", 0.001, 0)
    visitor, owner = SimpleNamespace(username=None), SimpleNamespace(username="ann")
    for handler, args in ((events.save_config, (text, "c.toml")), (events.load_config, ("c.toml",)),
                          (events.start, ("c.toml",)), (events.stop, ("run",)), (events.validate, ("x", "any"))):
        with pytest.raises(gr.Error, match="owner"):
            handler(visitor, *args)
    assert not (tmp_path / "c.toml").exists()
    assert "owner" in events.refresh(visitor, "run")[0]
    assert "saved" in events.save_config(owner, text, "c.toml")
    closed = tab.TrainEvents(SimpleNamespace(settings=ctx.settings, runs_dir=tmp_path,
                                             access=Access(exposed=True, owner=None, why="shared")))
    with pytest.raises(gr.Error, match="turned off.*--auth"):
        closed.load_config(owner, "c.toml")


def test_progress_from_events(tmp_path):
    sample = tmp_path / "samples" / "s.png"  # where the trainer writes them
    sample.parent.mkdir()
    tab.loss_plot([1.0, 0.5]).save(sample)
    events = [{"event": "start", "global_step": 0},
              {"event": "step", "step": 1, "total_steps": 4, "stage": 0, "loss": 1.0, "lr": 1e-5, "it_s": 2.0,
               "eta_s": 65.0},
              {"event": "sample", "step": 1, "images": [str(sample)]},
              {"event": "step", "step": 2, "total_steps": 4, "stage": 0, "loss": 0.8, "lr": 1e-5, "it_s": 2.0,
               "eta_s": 1.0},
              {"event": "validation", "step": 2, "clip_i": 0.8123, "dino_i": 0.6, "clip_t": None, "cases": 1}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "st')
    status, plot, gallery = tab.progress(tmp_path)
    assert "step 2/4" in status and "ETA 0h00m01s" in status and gallery == [str(sample)]
    assert "validation at step 2: CLIP-I 0.812, DINO-I 0.600" in status and "CLIP-T" not in status
    assert plot.size == (480, 200)
    status, _, _ = tab.progress(tmp_path, returncode=1)
    assert status.startswith("**exited with code 1**")


def test_stop_shows_cancelling_until_the_trainer_takes_it(tmp_path):
    from trainer.events import STOP, take_request

    (tmp_path / "events.jsonl").write_text(json.dumps({"event": "start", "global_step": 0}) + "\n" + json.dumps(
        {"event": "step", "step": 1, "total_steps": 4, "stage": 0, "loss": 1.0, "lr": 1e-5}) + "\n")
    events = tab.TrainEvents(SimpleNamespace(runs_dir=tmp_path.parent))
    assert events._request(str(tmp_path), STOP).startswith("Cancelling...")
    assert "cancelling..." in tab.progress(tmp_path)[0]
    assert take_request(tmp_path, STOP)  # the trainer takes it after its step
    assert "cancelling" not in tab.progress(tmp_path)[0]


def test_validate_text_and_tab_builds(tmp_path):
    from .conftest import make_unpaired

    assert tab.validate_text(str(make_unpaired(tmp_path / "u", 2)), "unpaired").startswith("OK")
    with gr.Blocks():
        ui = tab.build(SimpleNamespace(settings=SimpleNamespace(models="tiny")))
    assert ui.events.models() == "tiny"


def test_memory_plan_of_the_config_text(trainer_home, tmp_path):
    text = tab.build_config_text("48gb", "tiny", "run", str(tmp_path / "u"), "", 0.001, 0)
    table = tab.plan_config_text(text, tmp_path)
    assert "GPU peak" in table and "unpaired-512" in table
    assert table.startswith(tab.TINY_PLAN_NOTE)  # the tiny models' figures are said to be theirs
    with pytest.raises(StudioInputError, match="resolution"):
        tab.plan_config_text(text.replace("resolution = 512", "resolution = 500"), tmp_path)


def test_check_memory_from_a_preset_alone_gives_the_real_models_figures(trainer_home, tmp_path, capsys):
    """No dataset, no config: the preset's plan with the real FLUX.1-dev figures, the ones `train plan --preset`
    prints (issue 22: it asked for a [[stages]] table and showed the tiny models' 0.0 GiB)."""
    from app.cli import main

    table = tab.plan_config_text("", tmp_path, 1, "24gb")
    assert table.startswith("preset 24gb: the real FLUX.1-dev and adapter") and tab.TINY_PLAN_NOTE not in table
    assert main(["train", "plan", "--preset", "24gb"]) == 0
    cli = capsys.readouterr().out
    for figure in ("GPU peak  12.9 GiB", "GPU peak  14.3 GiB", "RAM peak  42.5 GiB"):  # the CLI's figures
        assert figure in table and figure in cli
    with pytest.raises(StudioInputError, match="choose your GPU's memory"):
        tab.plan_config_text("  ", tmp_path, 1, None)


def test_the_preset_dropdown_labels_are_short_enough_to_show_whole():
    """The dropdown once held each preset's whole description and cut it off; it now shows the card it is for."""
    from app.tabs.train import TRAIN_PRESETS, preset_label

    labels = [preset_label(k) for k in TRAIN_PRESETS]
    assert labels[0] == "24gb: one 24 GB card"
    assert all(len(label) <= 40 for label in labels), labels
