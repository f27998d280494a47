"""What Gradio may serve follows the studio: an output folder chosen in Settings is served at once (its new images
show in the gallery), and an image the History lists from an earlier output folder is served file by file (never the
rest of that folder). Before, Gradio kept the folders of launch time: the gallery of a Generate after moving the
output folder failed with Gradio's "Cannot move ... to the gradio cache dir", and so did the History tab."""

from __future__ import annotations

import tempfile
from argparse import Namespace
from pathlib import Path

from gradio.utils import is_allowed_file
from gradio_client import Client
from PIL import Image

from app.character_library import CharacterLibrary
from app.context import ASSETS, StudioContext, StudioSettings
from app.generation_history import GenerationHistory, HistoryEntry
from app.studio import build_studio, launch_kwargs
from app.tabs.generate_events import form_values
from app.tabs.settings import SettingsEvents
from core.io.metadata import GenerationRecord, read_record, save_png

from .conftest import free_port


def _context(tmp_path: Path) -> tuple[StudioContext, Path]:
    """A studio whose output folder is ``out``, with one History image made earlier in ``old``; returns the
    context and that image."""
    (tmp_path / "old").mkdir()
    made = save_png(Image.new("RGB", (32, 32), "teal"), tmp_path / "old" / "made.png",
                    GenerationRecord(prompt="an old teal cat", seed=5, width=32, height=32))
    Image.new("RGB", (8, 8)).save(tmp_path / "old" / "neighbour.png")  # not the studio's: never served
    history = GenerationHistory(tmp_path / "history.jsonl")
    history.add(HistoryEntry(path=str(made), prompt="an old teal cat", seed=5, width=32, height=32))
    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"),
                        library=CharacterLibrary(tmp_path / "library"), history=history)
    return ctx, made


def _served(served: list[str], path: Path) -> bool:
    """Gradio's own rule for a file a handler returns (``processing_utils._check_allowed``), on ``served``."""
    return is_allowed_file(path.resolve(), blocked_paths=[], allowed_paths=served, created_paths=[])[0]


def test_served_paths_are_the_studio_folders_then_history_images_one_by_one(tmp_path):
    ctx, made = _context(tmp_path)
    served = ctx.served_paths()
    assert served[:4] == [str(tmp_path / "out"), str(tmp_path / "library"), str(ASSETS), str(made)]
    assert served[4:] == [str(folder) for folder in ctx.run_image_folders()]
    assert _served(served, made) and _served(served, tmp_path / "out" / "new.png")
    assert not _served(served, tmp_path / "old" / "neighbour.png")
    assert ctx.served_paths() is served  # one list, refreshed in place (Gradio keeps the one it was launched with)


def test_a_new_output_folder_is_served_at_once(tmp_path, monkeypatch):
    # Gradio also serves its temp folder and the working folder: put the temp folder aside, so that the studio's
    # folders (under pytest's temp folder) are served only if the studio says so, as on a user's disk
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ctx, made = _context(tmp_path)
    demo = build_studio(ctx)
    args = Namespace(host="127.0.0.1", port=free_port(), share=False, auth=None)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(ctx, args))
    try:
        assert demo.allowed_paths is ctx.served_paths()
        SettingsEvents(ctx).apply("tiny", "", "", "", "", ctx.settings.preset, str(tmp_path / "moved"))
        assert str(tmp_path / "moved") in demo.allowed_paths and str(made) in demo.allowed_paths
        client = Client(url, verbose=False)
        result = client.predict(*form_values(prompt="a lighthouse", steps=1, width=32, height=32, seed=7,
                                             randomize_seed=False), api_name="/generate")
        [item] = result[0]
        assert read_record(item["image"]).prompt == "a lighthouse"  # the gallery's image came back
        assert [p.name for p in (tmp_path / "moved").glob("*.png")] != []
    finally:
        demo.close()


def test_a_runs_samples_are_served_from_its_first_sample_and_nothing_else_of_it(tmp_path):
    """The Train tab shows a run's samples: their folder is served once they appear (before, the tab's refresh
    failed on a user's disk, where the runs folder is not a temporary one), never the run's other files, and an
    event naming a file outside the run's image folders is not followed."""
    from app.tabs.train import TrainEvents
    from trainer.events import EventLog

    ctx, _ = _context(tmp_path)
    served = ctx.served_paths()
    run = ctx.runs_dir / "served-samples-run"
    (run / "samples").mkdir(parents=True)
    sample = run / "samples" / "step-1.png"
    Image.new("RGB", (8, 8), "red").save(sample)
    Image.new("RGB", (8, 8)).save(run / "config-picture.png")
    log = EventLog(run)
    log.emit("start", global_step=0)
    log.emit("sample", step=1, images=[str(sample), str(run / "config-picture.png"), "/etc/passwd"])
    assert str(run / "samples") not in served
    _, _, images = TrainEvents(ctx).refresh(None, str(run))
    assert images == [str(sample)]
    assert str(run / "samples") in served and _served(served, sample)
    assert not _served(served, run / "config-picture.png") and not _served(served, run / "events.jsonl")
