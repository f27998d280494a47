"""Temporary files that a killed write left behind (``.NAME.*.tmp`` from ``atomic_path``) are removed where the
project writes: beside saved PNGs (output folder, ``generate --out``) and in a story's render, panel and page folders."""

from __future__ import annotations

import os
import time

from PIL import Image

from core.io.metadata import GenerationRecord, save_png
from core.io.paths import STALE_AFTER_S
from core.story.manifest import PAGES_DIR, PANELS_DIR, remove_temporaries


def _temporary(folder, name: str, age_s: float = 0.0):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.abc123.tmp"
    path.write_bytes(b"half a file")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_saving_a_png_removes_what_a_killed_save_left_and_keeps_a_live_write(tmp_path):
    stale = _temporary(tmp_path, "20261206-1-aaaaaa.png", age_s=STALE_AFTER_S + 60)
    live = _temporary(tmp_path, "20261206-2-bbbbbb.png")  # another process writing now
    save_png(Image.new("RGB", (8, 8)), tmp_path / "out.png", GenerationRecord(prompt="a cat", seed=1))
    assert not stale.exists()
    assert live.exists()
    assert (tmp_path / "out.png").is_file()


def test_a_render_folder_loses_temporaries_in_its_panel_and_page_folders(tmp_path):
    left = [_temporary(tmp_path, "manifest.json"), _temporary(tmp_path / PANELS_DIR, "panel-01.png"),
            _temporary(tmp_path / PAGES_DIR, "page-01.png")]
    kept = tmp_path / PAGES_DIR / "page-01.png"
    kept.write_bytes(b"a page")
    removed = remove_temporaries(tmp_path)
    assert sorted(removed) == sorted(left)
    assert not any(p.exists() for p in left) and kept.exists()
