"""A real browser (Debian's chromium through Playwright): upload a character, paint a mask stroke on its layer,
Generate, and see the image in the gallery with the painted mask in its metadata. Saves ``test-artifacts/studio.png``
and the README screenshot ``assets/screenshot.png``."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.mask_canvas import LAYER_NAMES

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
GRID = 32  # the saved mask is checked on a GRID x GRID grid

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def paint_stroke(page, canvas, x0: float, x1: float, y: float) -> None:
    """Drags the mouse (left button held) across ``canvas`` from ``(x0, y)`` to ``(x1, y)``, in offsets from the
    canvas centre as fractions of its shorter side. The editor (pixi.js) follows pointer events on its stage: the
    pointer has to be seen over the image before the button goes down, and the stroke needs intermediate moves."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    side = min(box["width"], box["height"])
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx + x0 * side, cy + y * side, steps=5)
    page.mouse.down()
    page.mouse.move(cx + x1 * side, cy + y * side, steps=30)
    page.mouse.up()


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_generate_in_a_real_browser(studio, character_files):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    from core.conditioning.masks import RoutingMask
    from core.io.metadata import read_record

    ctx, _, url = studio
    before = set(Path(ctx.settings.output_dir).glob("*.png"))
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            editor = page.locator("#mask-canvas")
            page.wait_for_selector("#mask-canvas canvas", timeout=60_000)
            # the layer picker shows the characters' layers by name (not the editor's "Layer 1")
            sync_api.expect(editor).to_contain_text(LAYER_NAMES[0], timeout=30_000)
            editor.locator("button[aria-label='Show Layers']").click()
            for i, name in enumerate(LAYER_NAMES):
                sync_api.expect(editor.locator(f"button[aria-label='layer-{i + 1}']")).to_have_text(name)
            assert "Layer 1" not in editor.inner_text()

            page.locator("#character-image-1 input[type=file]").set_input_files(str(character_files[0]))
            page.wait_for_selector("#character-image-1 img", timeout=30_000)
            page.locator("#character-name-1 textarea, #character-name-1 input").first.fill("Mia")

            # paint a horizontal stroke through the middle on the first character's layer
            editor.locator("button[aria-label='layer-1']").click()
            editor.locator("button[aria-label='Show Layers']").click()  # close the layer list
            editor.locator("button[aria-label='Brush']").click()
            page.keyboard.press("Escape")  # close the brush options pop-up
            paint_stroke(page, editor.locator("canvas").first, -0.2, 0.2, 0.0)
            page.wait_for_timeout(300)

            page.locator("#prompt textarea").fill("[Mia] on a hill")
            page.locator("#generate").click()
            page.wait_for_selector("#gallery img", timeout=120_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(artifacts / "studio.png"), full_page=True)
            # the README screenshot: characters, the painted canvas and the gallery, at the viewport's width
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(ROOT / "assets" / "screenshot.png"), full_page=True,
                            clip={"x": 0, "y": 0, "width": 1400, "height": 1300})
        finally:
            browser.close()
    [made] = set(Path(ctx.settings.output_dir).glob("*.png")) - before
    record = read_record(made)
    assert record.prompt == "[Mia] on a hill" and record.characters[0].name == "Mia"
    assert record.characters[0].mask is not None, "the painted stroke did not reach the character's mask"
    weights = RoutingMask.from_json(record.characters[0].mask).weights(GRID, GRID).reshape(GRID, GRID).numpy()
    middle = GRID // 2
    # the stroke crosses the middle of the image from about 0.27 to 0.73 of its width; the rest stays unpainted
    assert weights[middle - 1:middle + 2, GRID * 2 // 5:GRID * 3 // 5].min() > 0
    assert weights[:GRID // 4].max() == 0 and weights[-GRID // 4:].max() == 0
    assert weights[:, :GRID // 8].max() == 0 and weights[:, -GRID // 8:].max() == 0
