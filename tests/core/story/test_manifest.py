"""Atomic writes and the resume decision."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from core.story.manifest import (
    DONE,
    FAILED,
    PanelRecord,
    RenderManifest,
    atomic_path,
    load_manifest,
    merge_parts,
    panel_filename,
    part_path,
    save_manifest,
    sha256_file,
    write_png_atomic,
)
from core.story.load import load_story
from core.story.parse_text import parse_story
from core.story.settings import panel_request, panel_settings, panel_settings_hash, panels_to_render
from tests.core.story.conftest import STORIES, small_story_text


def test_write_png_atomic_leaves_no_temp_files(tmp_path):
    path = write_png_atomic(Image.new("RGB", (8, 8), "red"), tmp_path / "a" / "p.png")
    assert Image.open(path).size == (8, 8)
    assert [p.name for p in path.parent.iterdir()] == ["p.png"]


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def _done(story, out_dir, index):
    file = panel_filename(index)
    write_png_atomic(Image.new("RGB", (4, 4)), out_dir / file)
    return PanelRecord(index, panel_settings_hash(story, story.panels[index]), story.panels[index].seed, DONE,
                       file=file, file_sha256=sha256_file(out_dir / file))


def test_panels_to_render(story_dir, tmp_path):
    story = parse_story(small_story_text(4), base_dir=story_dir)
    out = tmp_path / "out"
    manifest = RenderManifest()
    assert panels_to_render(story, manifest, out) == [0, 1, 2, 3]
    for i in range(4):
        manifest.record(_done(story, out, i))
    assert panels_to_render(story, manifest, out) == []
    manifest.record(PanelRecord(1, manifest.panels[1].settings_hash, 0, FAILED, error="OOM"))
    (out / manifest.panels[2].file).unlink()  # file gone
    (out / manifest.panels[3].file).write_bytes(b"\x89PNG truncated")  # file damaged after the fact
    assert panels_to_render(story, manifest, out) == [1, 2, 3]
    assert panels_to_render(story, manifest, out, options={"num_inference_steps": 4}) == [0, 1, 2, 3]


def test_settings_hashes_of_render_folders_made_before_stay_the_same():
    """A render folder made by an earlier version resumes without rendering again: the hashes of an example story
    are the values every version since the settings hash began has written (with and without render options)."""
    story = load_story(STORIES / "fishing-trip.story")
    options = {"max_sequence_length": 256, "num_inference_steps": 4}
    assert [panel_settings_hash(story, story.panels[i], o) for i in (0, 1, 2) for o in (None, options)] == [
        "3785fcf3b59f5ad6518ba9e27a84202a648de80dcaf1ebd3a2c0e05cb1f0baae",
        "4388f428d6a340573fe83e8585434fde23737bad783732bebf9484cba2d4479c",
        "8f5bed43faae853234ed139ab8db3522fafa458fa3ea418bda0384a9450a277b",
        "5c06fd3e37017e89016a14da5d57b23c4ed97fb9ae6c091e41b93bebb3a22264",
        "d3afee4f9e646d5678856ea5d7d18e38a048f11152a31a567764e97c85401392",
        "a2476139c3063a5b5ca64db19bf5c89ab6e4b6ce345afa94a2a114ce30924b5f",
    ]


def test_panel_settings_are_read_from_the_request_summary():
    story = load_story(STORIES / "fishing-trip.story")
    panel = story.panels[0]
    summary = panel_request(story, panel, []).summary()
    settings = panel_settings(story, panel)
    assert (settings["prompt"], settings["seed"], settings["size"], settings["steps"], settings["guidance"],
            settings["true_cfg"]) == (summary["prompt"], summary["seed"], [summary["width"], summary["height"]],
                                      summary["steps"], summary["guidance"], summary["true_cfg_scale"])
    assert settings["regional_text"] == summary["regional_text"]  # two characters


def test_manifest_round_trip_and_parts(story_dir, tmp_path):
    story = parse_story(small_story_text(3), base_dir=story_dir)
    manifest = RenderManifest(story=story.to_dict(relative_to=tmp_path))
    manifest.record(_done(story, tmp_path, 0))
    manifest.record(PanelRecord(1, "h", 1, FAILED, error="boom"))
    save_manifest(manifest, tmp_path)
    assert load_manifest(tmp_path).to_dict() == manifest.to_dict()
    part = RenderManifest(story=manifest.story)
    part.record(_done(story, tmp_path, 1))
    (part_path(tmp_path, 1)).write_text(json.dumps(part.to_dict()))
    (part_path(tmp_path, 2)).write_text("{ half-written")  # ignored, not trusted
    loaded = load_manifest(tmp_path)
    assert loaded.panels[1].status == DONE and loaded.panels[0] == manifest.panels[0]
    merged = merge_parts(tmp_path)
    assert merged.panels[1].status == DONE
    assert not list(tmp_path.glob("manifest.part-*")) and load_manifest(tmp_path).to_dict() == merged.to_dict()


def test_unreadable_manifest_means_render_everything(story_dir, tmp_path):
    story = parse_story(small_story_text(2), base_dir=story_dir)
    (tmp_path / "manifest.json").write_text('{"panels": [{"index": 0')
    assert panels_to_render(story, load_manifest(tmp_path), tmp_path) == [0, 1]
