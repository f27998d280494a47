"""A real browser uses the control panel: a drawn skeleton uploaded as control image 1 (pose), a photo turned into
edges with "Make from photo" for control image 2 (canny), Generate; the PNG records both controls, saved beside it.
Saves the README screenshot ``screenshots/control.png`` (under ``assets/`` with ``STUDIO_SCREENSHOTS=1``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.app.test_browser import CHROMIUM, SCREENSHOT_ROOT, browser_page, wait_for_gallery_image
from tests.app.test_browser_edit import wait_for_new

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _skeleton(path: Path) -> Path:
    """An OpenPose skeleton of a figure with a raised arm (joints in OpenPose's 18-point order)."""
    from core.conditioning.preprocessors import draw_openpose

    joints = np.array([[64, 30, 1], [64, 50, 1], [48, 50, 1], [40, 30, 1], [36, 12, 1], [80, 50, 1], [88, 72, 1],
                       [92, 92, 1], [54, 92, 1], [52, 120, 1], [50, 150, 1], [74, 92, 1], [76, 120, 1],
                       [78, 150, 1], [60, 26, 1], [68, 26, 1], [56, 28, 1], [72, 28, 1]], dtype=np.float32)
    draw_openpose((128, 160), [joints]).save(path)
    return path


def _photo(path: Path) -> Path:
    """A drawing of a house on a hill (shapes with clear edges)."""
    image = Image.new("RGB", (128, 160), (235, 240, 250))
    draw = ImageDraw.Draw(image)
    draw.ellipse((-40, 100, 170, 220), fill=(90, 160, 80))
    draw.rectangle((40, 60, 96, 110), fill=(200, 120, 90))
    draw.polygon([(34, 62), (68, 30), (102, 62)], fill=(120, 60, 50))
    draw.rectangle((60, 82, 74, 110), fill=(80, 50, 40))
    image.save(path)
    return path


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_control_panel_in_a_real_browser(studio, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    from core.io.metadata import read_record

    ctx, _, url = studio
    out_dir = Path(ctx.settings.output_dir)
    before = set(out_dir.glob("*.png"))
    skeleton, photo = _skeleton(tmp_path / "skeleton.png"), _photo(tmp_path / "house.png")
    with browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#mask-canvas canvas", timeout=60_000)
        page.get_by_text("Pose and layout control (ControlNet)").click()
        page.locator("#control-image-1 input[type=file]").set_input_files(str(skeleton))
        page.locator("#control-photo-2 input[type=file]").set_input_files(str(photo))
        # an upload is the component's value once its preview shows: "Make from photo" before that has no photo
        page.wait_for_selector("#control-image-1 img", timeout=30_000)
        page.wait_for_selector("#control-photo-2 img", timeout=30_000)
        kind = page.locator("#control-kind-2 input")
        kind.click()
        page.get_by_role("option", name="canny").click()
        sync_api.expect(kind).to_have_value("canny", timeout=10_000)
        page.locator("#control-make-2").click()
        page.wait_for_selector("#control-image-2 img", timeout=60_000)
        page.wait_for_timeout(800)
        page.locator("#prompt textarea").fill("a child waving in front of a house on a hill")
        page.locator("#generate").click()
        wait_for_gallery_image(page)
        made = [p for p in wait_for_new(out_dir, before, 1) if not p.name.startswith("control-")]
        assert len(made) == 1, made
        made = made[0]
        page.wait_for_timeout(800)
        for close in page.locator(".toast-close").all():  # the "made a canny control image" notice
            close.click()
        page.wait_for_timeout(500)
        save_screenshot(page, SCREENSHOT_ROOT / "screenshots" / "control.png")

    record = read_record(made)
    assert [c["kind"] for c in record.control or []] == ["pose", "canny"], record.control
    assert all((out_dir / c["file"]).is_file() for c in record.control)


def save_screenshot(page, path: Path) -> None:
    """The control panel beside the gallery, one picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shots = [Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")
             for selector in ("#control-section", "#gallery")]
    height = max(s.height for s in shots)
    picture = Image.new("RGB", (sum(s.width for s in shots) + 16, height), "white")
    picture.paste(shots[0], (0, 0))
    picture.paste(shots[1], (shots[0].width + 16, 0))
    picture.save(path)
