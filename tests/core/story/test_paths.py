"""Character image paths go through a PathPolicy before anything is read; big files and images are refused from
their size and header; digests are remembered; the export never reads or writes through a link."""

from __future__ import annotations

import os
import struct
import zipfile
import zlib

import pytest
from PIL import Image

import core.io.cache
from core.limits import MAX_FILE_BYTES
from core.io.path_policy import PathNotAllowedError, PathPolicy
from core.story.export import export_story, write_zip
from core.story.load import load_story
from core.story.manifest import file_inside, load_manifest, save_manifest
from core.story.model import StoryError
from core.story.parse_json import story_from_dict
from core.story.parse_text import parse_story
from core.story.render import render_story
from tests.core.story.conftest import fake_pipe_engine, make_character_image, small_story_text


@pytest.fixture
def root(tmp_path):
    """An allowed folder with a story's character images, and a secret image beside it (outside)."""
    allowed = tmp_path / "allowed"
    make_character_image(allowed / "chars" / "ann.png", (200, 30, 30))
    make_character_image(tmp_path / "secret.png", (1, 2, 3))
    return allowed


def refused(text: str, base, policy) -> list[str]:
    with pytest.raises(StoryError) as info:
        parse_story(text, base_dir=base, paths=policy)
    return str(info.value).splitlines()


def story_text(image: str) -> str:
    return f"character Ann: {image}\n---\n[Ann] waves\n"


def test_paths_outside_the_policy_are_problems_that_read_the_same_whether_the_file_exists(root, monkeypatch):
    policy = PathPolicy([root], labels={str(root.resolve()): "the stories folder"})
    assert parse_story(story_text("chars/ann.png"), base_dir=root, paths=policy).characters["Ann"].image == (
        root / "chars" / "ann.png").resolve()
    import core.story.parse_checks as fmt

    monkeypatch.setattr(fmt, "cached_sha256", lambda *a, **k: pytest.fail("hashed a refused file"))
    monkeypatch.setattr(fmt, "_image_header_problem", lambda *a: pytest.fail("opened a refused file"))
    for image in ("/etc/passwd", "../secret.png", "../missing.png", "/proc/self/environ", "chars/../../secret.png"):
        assert refused(story_text(image), root, policy) == [
            f"line 1: image of [Ann] {image} is outside the folders this studio may use (the stories folder)"]
    os.symlink(root.parent / "secret.png", root / "link.png")
    assert refused(story_text("link.png"), root, policy) == [
        "line 1: image of [Ann] link.png is outside the folders this studio may use (the stories folder)"]
    data = {"format": "instantcharacter-story", "characters": [{"name": "Ann", "image": "../secret.png"}],
            "panels": [{"prompt": "[Ann] waves", "characters": ["Ann"]}]}
    with pytest.raises(StoryError, match=r"^characters\[0\]: image of \[Ann\] \.\./secret\.png is outside"):
        story_from_dict(data, base_dir=root, paths=policy)


def test_load_story_checks_the_story_file_too(root, tmp_path):
    policy = PathPolicy([root])
    outside = tmp_path / "outside.story"
    outside.write_text(story_text("allowed/chars/ann.png"))
    with pytest.raises(StoryError, match="story .*outside.story is outside the folders"):
        load_story(outside, paths=policy)
    inside = root / "in.story"
    inside.write_text(story_text("../secret.png"))
    with pytest.raises(StoryError, match=r"line 1: image of \[Ann\] \.\./secret\.png is outside"):
        load_story(inside, paths=policy)
    assert load_story(outside).characters["Ann"].image.is_file()  # the command line: anything goes


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` with no pixel data (only the header can be read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_big_files_and_images_refused_from_size_and_header(story_dir, monkeypatch):
    import core.story.parse_checks as fmt

    monkeypatch.setattr(fmt, "cached_sha256", lambda *a, **k: pytest.fail("hashed a refused file"))
    big = story_dir / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing written
    assert refused(story_text("big.png"), story_dir, PathPolicy([story_dir])) == [
        "line 1: the image of [Ann] is 52,428,801 bytes: the limit is 52,428,800 (50 MB)"]
    (story_dir / "wide.png").write_bytes(png_header(7000, 7000))
    assert refused(story_text("wide.png"), story_dir, PathPolicy([story_dir])) == [
        "line 1: the image of [Ann] is 7000x7000 pixels (49.0 million): the limit is 40 million"]
    (story_dir / "bomb.png").write_bytes(png_header(30000, 30000))
    assert refused(story_text("bomb.png"), story_dir, PathPolicy([story_dir])) == [
        "line 1: the image of [Ann] has more than 40,000,000 pixels: the limit is 40,000,000"]
    (story_dir / "notes.png").write_text("not an image")
    assert refused(story_text("notes.png"), story_dir, PathPolicy([story_dir])) == [
        "line 1: the image of [Ann] is not an image Pillow can read (PNG, JPEG, WebP...)"]
    (story_dir / "folder.png").mkdir()
    assert refused(story_text("folder.png"), story_dir, PathPolicy([story_dir]))[0].startswith(
        "line 1: missing image for [Ann]: folder.png")


def test_digest_remembered_by_size_and_time(story_dir, monkeypatch):
    image = story_dir / "chars" / "ann.png"
    old = image.stat().st_mtime - 3600
    os.utime(image, (old, old))
    reads = []
    real_open = open
    monkeypatch.setattr(core.io.cache, "open", lambda p, *a: reads.append(p) or real_open(p, *a), raising=False)
    text = small_story_text(3)
    first = parse_story(text, base_dir=story_dir).characters["Ann"].image_sha256
    assert parse_story(text, base_dir=story_dir).characters["Ann"].image_sha256 == first
    assert [os.path.basename(p) for p in reads].count("ann.png") == 1  # hashed once for both parses
    make_character_image(image, (10, 200, 10))  # new content: a new size or time, hashed again
    os.utime(image, (old + 5, old + 5))
    assert parse_story(text, base_dir=story_dir).characters["Ann"].image_sha256 != first


# ------------------------------------------------------------------------------------------------ export
def rendered(story_dir, tmp_path):
    story = parse_story(small_story_text(2, "grid 1x2"), base_dir=story_dir)
    out = tmp_path / "out"
    render_story(story, fake_pipe_engine(), out)
    return story, out


def test_zip_never_follows_a_link(story_dir, tmp_path):
    story, out = rendered(story_dir, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (out / "panels" / "panel-001.png").unlink()
    os.symlink(secret, out / "panels" / "panel-001.png")
    with pytest.raises(PathNotAllowedError, match="is a link or outside the render folder"):
        write_zip(out, [out / "panels" / "panel-001.png"], out / "x.zip")
    with pytest.raises(PathNotAllowedError):
        write_zip(out, [out / ".." / "secret.txt"], out / "x.zip")
    assert file_inside(out, "panels/panel-001.png") is None  # a linked panel is neither shown nor packed
    result = export_story(story, out)
    with zipfile.ZipFile(result.zip) as archive:
        names = archive.namelist()
        assert "panels/panel-001.png" not in names and all(b"password" not in archive.read(n) for n in names)
    assert result.missing_panels == [0]


def test_manifest_file_names_stay_inside_the_render_folder(story_dir, tmp_path):
    import dataclasses

    story, out = rendered(story_dir, tmp_path)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(secret)
    manifest = load_manifest(out)
    manifest.panels[0] = dataclasses.replace(manifest.panels[0], file="../secret.png", file_sha256=None)
    save_manifest(manifest, out)
    assert file_inside(out, "../secret.png") is None and file_inside(out, str(secret)) is None
    with zipfile.ZipFile(export_story(story, out).zip) as archive:
        assert not any("secret" in name for name in archive.namelist())


def test_export_writes_no_file_through_a_link(story_dir, tmp_path):
    story, out = rendered(story_dir, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "characters")
    with pytest.raises(PathNotAllowedError, match="outside the render folder"):
        export_story(story, out)
    assert not list(elsewhere.iterdir())


def test_export_copies_only_the_character_file_that_was_checked(story_dir, tmp_path):
    story, out = rendered(story_dir, tmp_path)
    make_character_image(story_dir / "chars" / "ann.png", (1, 1, 1))  # changed after the story was read
    with pytest.raises(StoryError, match=r"the image of \[Ann\] changed since the story was read"):
        export_story(story, out)
