"""User data that survives damage (issue 22, item 8): a cut or undecodable history line, a library folder replaced
by a file, a corrupt ``character.json`` or image, stale temporary files, a full disk. Each damaged piece is skipped
with a note naming it and kept aside (never deleted); the rest loads."""

from __future__ import annotations

import errno
import json
import os
import time

import gradio as gr
import pytest
from PIL import Image

from app.character_library import DAMAGED, CharacterLibrary
from app.errors import shown_to_user
from app.generation_history import GenerationHistory, HistoryEntry
from core.io.paths import remove_stale_temporaries, set_aside


def _png(path, colour=(200, 40, 40)):
    Image.new("RGB", (32, 32), colour).save(path)
    return path


def _entry(tmp_path, name, seed):
    return HistoryEntry(path=str(_png(tmp_path / f"{name}.png")), prompt=f"a {name}", seed=seed, width=32, height=32)


# ------------------------------------------------------------------------------------------------------- history
def test_a_cut_last_line_never_swallows_the_next_entry(tmp_path):
    history = GenerationHistory(tmp_path / "history.jsonl")
    history.add(_entry(tmp_path, "cat", 1))
    history.add(_entry(tmp_path, "dog", 2))
    raw = history.path.read_bytes()
    history.path.write_bytes(raw[:-20])  # a crash mid-write: the last line cut, no final newline
    history.add(_entry(tmp_path, "fox", 3))  # the next generation, confirmed to the user
    assert [e.prompt for e in history.entries()] == ["a fox", "a cat"]
    assert history.notes == [f"history: 1 damaged line of history.jsonl skipped (line 2); the file as it was is "
                             f"kept as {tmp_path / 'history.jsonl.damaged'}"]
    assert (tmp_path / "history.jsonl.damaged").read_bytes().startswith(raw[:-20])  # kept aside, not deleted
    history.notes.clear()
    assert [e.prompt for e in history.entries()] == ["a fox", "a cat"] and history.notes == []  # once only


def test_undecodable_history_bytes_are_skipped_and_kept_aside(tmp_path):
    history = GenerationHistory(tmp_path / "history.jsonl")
    history.add(_entry(tmp_path, "cat", 1))
    with open(history.path, "ab") as f:
        f.write(b'{"path": "\xff\xfe not utf-8"}\n')
    history.add(_entry(tmp_path, "dog", 2))
    original = history.path.read_bytes()
    assert [e.prompt for e in history.entries()] == ["a dog", "a cat"]
    assert len(history.notes) == 1 and "(line 2)" in history.notes[0] and "history.jsonl.damaged" in history.notes[0]
    assert (tmp_path / "history.jsonl.damaged").read_bytes() == original


def test_a_studio_starts_with_a_damaged_history(tmp_path):
    from app.context import StudioContext, StudioSettings

    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\x80\x81\x82\n")
    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"),
                        history=GenerationHistory(path), library=CharacterLibrary(tmp_path / "library"))
    assert ctx.history.entries() == [] and "(line 1)" in ctx.history.notes[0]


# ------------------------------------------------------------------------------------------------------- library
def test_a_library_folder_replaced_by_a_file_is_kept_aside(tmp_path):
    (tmp_path / "library").write_text("not a folder")
    library = CharacterLibrary(tmp_path / "library")
    assert (tmp_path / "library").is_dir() and library.entries() == []
    assert (tmp_path / "library.damaged").read_text() == "not a folder"
    assert library.notes == [f"the library folder {tmp_path / 'library'} was a file: kept aside as "
                             f"{tmp_path / 'library.damaged'}, a new library started"]


@pytest.fixture
def library(tmp_path):
    library = CharacterLibrary(tmp_path / "library")
    library.save(_png(tmp_path / "a.png"), "Alice", 0.8)
    library.save(_png(tmp_path / "b.png", (40, 60, 200)), "Bob", 0.7)
    return library


def test_a_corrupt_character_json_is_named_and_kept_aside(library):
    (library.folder / "bob" / "character.json").write_text('{"name": "Bob", "sca')
    assert library.names() == ["Alice"]
    kept = library.folder / DAMAGED / "bob.damaged"
    assert library.notes == [f"library character 'bob' skipped (character.json cannot be read: JSONDecodeError); "
                             f"kept aside as {kept}"]
    assert (kept / "image.png").is_file() and (kept / "character.json").read_text() == '{"name": "Bob", "sca'


def test_a_corrupt_library_image_is_named_and_kept_aside(library):
    image = library.folder / "alice" / "image.png"
    image.write_bytes(image.read_bytes()[:60])  # cut mid-file
    assert library.names() == ["Bob"]
    assert len(library.notes) == 1 and library.notes[0].startswith("library character 'alice' skipped (image.png "
                                                                   "cannot be decoded: ")
    assert (library.folder / DAMAGED / "alice.damaged" / "image.png").is_file()
    library.save(_png(library.folder.parent / "a2.png"), "Alice")  # the name can be saved again
    assert library.names() == ["Alice", "Bob"]


def test_set_aside_never_overwrites(tmp_path):
    for text in ("one", "two"):
        (tmp_path / "x").write_text(text)
        set_aside(tmp_path / "x")
    assert (tmp_path / "x.damaged").read_text() == "one" and (tmp_path / "x.damaged-2").read_text() == "two"


# --------------------------------------------------------------------------------------------- temporaries, disk
def test_stale_temporary_files_are_removed_and_fresh_ones_kept(tmp_path):
    library_dir = tmp_path / "library" / "alice"
    library_dir.mkdir(parents=True)
    stale = library_dir / ".image.png.k2j3.tmp"
    fresh = library_dir / ".character.json.a8d1.tmp"
    other = library_dir / "notes.tmp"  # not one of atomic_path's
    for path in (stale, fresh, other):
        path.write_bytes(b"x")
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    CharacterLibrary(tmp_path / "library")
    assert not stale.exists() and fresh.exists() and other.exists()
    os.utime(fresh, (hour_ago, hour_ago))
    assert remove_stale_temporaries(library_dir) == [fresh]


def test_a_full_disk_is_a_user_message_in_the_studio():
    def save(path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    with pytest.raises(gr.Error) as caught:
        shown_to_user(save)("/data/out/image.png")
    assert caught.value.message == "No space left on device (/data/out/image.png): free some space and try again"

    def broken():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(gr.Error) as caught:  # not the user's to act on: still said to be unexpected
        shown_to_user(broken)()
    assert caught.value.message.startswith("Unexpected error (OSError: [Errno 5] Input/output error)")


def test_the_library_folder_is_served_and_only_the_studio_folders(tmp_path):
    from app.context import ASSETS, StudioContext, StudioSettings

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"),
                        library=CharacterLibrary(tmp_path / "library"), history=GenerationHistory(tmp_path / "h"))
    served = ctx.served_paths()
    assert served[:3] == [str(tmp_path / "out"), str(tmp_path / "library"), str(ASSETS)]
    assert served[3:] == [str(folder) for folder in ctx.run_image_folders()]  # runs' samples: nothing else


def test_history_json_written_with_a_final_newline(tmp_path):
    history = GenerationHistory(tmp_path / "history.jsonl")
    history.add(_entry(tmp_path, "cat", 1))
    lines = history.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and json.loads(lines[0])["seed"] == 1
