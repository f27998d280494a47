"""A real browser edits a generated image: Generate, select it in the gallery, "Edit this", paint a region on the
edit canvas, Edit; the new PNG is an inpainting edit of the first whose pixels outside the feathered region are the
first image's. Saves the README screenshot ``screenshots/edit.png`` (under ``assets/`` with ``STUDIO_SCREENSHOTS=1``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.app.test_browser import (CHROMIUM, SCREENSHOT_ROOT, browser_page, paint_stroke, run_event,
                                    wait_for_gallery_image)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_edit_a_painted_region_in_a_real_browser(studio):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    from core.conditioning.edit import outside
    from core.conditioning.masks import RoutingMask
    from core.io.metadata import read_record

    ctx, _, url = studio
    out_dir = Path(ctx.settings.output_dir)
    before = set(out_dir.glob("*.png"))
    with browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#mask-canvas canvas", timeout=60_000)
        page.locator("#prompt textarea").fill("a lighthouse on a cliff")
        page.locator("#generate").click()
        wait_for_gallery_image(page)
        [first] = wait_for_new(out_dir, before, 1)

        page.locator("#gallery img").first.click()  # selects it (its path goes to Recall)
        # "Edit this" edits the Recall file: see the selection land there before pressing it
        page.locator("#recall").get_by_text("Recall", exact=True).click()  # open the section
        sync_api.expect(page.locator("#recall-file")).to_contain_text(first.stem, timeout=30_000)
        page.get_by_text("Edit an image (image-to-image, inpainting)").click()  # open the section
        editor = page.locator("#edit-canvas")
        run_event(editor, page.locator("#edit-this").click)  # paint once the picture is in the editor
        editor.locator("button[aria-label='Brush']").click()
        page.keyboard.press("Escape")  # close the brush options pop-up
        for y in (-0.05, 0.0, 0.05):
            paint_stroke(page, editor.locator("canvas").first, -0.15, 0.15, y)
        page.wait_for_timeout(300)
        page.locator("#edit").click()
        [edited] = wait_for_new(out_dir, before | {first}, 1)
        page.wait_for_timeout(800)
        save_screenshot(page, SCREENSHOT_ROOT / "screenshots" / "edit.png")

    record = read_record(edited)
    assert record.edit is not None, "the edit did not reach the engine"
    assert record.edit["region"] is not None, "the painted region did not reach the edit"
    region = RoutingMask.from_json(record.edit["region"])
    size = (record.width, record.height)
    painted = region.weights(8, 8).reshape(8, 8).numpy()
    assert painted[3:5, 3:5].min() > 0 and painted[0].max() == 0 and painted[:, 0].max() == 0  # the middle only
    keep = outside(region, *size)
    source = np.asarray(Image.open(first).convert("RGB").resize(size))
    assert keep.any() and np.array_equal(np.asarray(Image.open(edited).convert("RGB"))[keep], source[keep])
    assert (out_dir / record.edit["source_file"]).is_file()


def wait_for_new(folder: Path, known: set, count: int, timeout: float = 120.0) -> list[Path]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted(p for p in folder.glob("*.png") if p not in known and not p.name.startswith("source-"))
        if len(new) >= count:
            time.sleep(0.3)
            return new
        time.sleep(0.2)
    raise AssertionError(f"no new image in {folder} after {timeout:.0f} s")


def save_screenshot(page, path: Path) -> None:
    """The gallery (the generated image and its edit) beside the edit section (the painted region), one picture."""
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    shots = [Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")
             for selector in ("#gallery", "#edit-section")]
    height = max(s.height for s in shots)
    picture = Image.new("RGB", (sum(s.width for s in shots) + 16, height), "white")
    picture.paste(shots[0], (0, 0))
    picture.paste(shots[1], (shots[0].width + 16, 0))
    picture.save(path)
