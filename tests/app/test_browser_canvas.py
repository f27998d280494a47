"""The routing canvas under quick clicks in a real browser (issue 22, item 6): Apply layout, Clear masks, switch
layer and paint within a second; the canvas stays drawn (no "processing" overlay left on it) and Apply layout
still works afterwards."""

from __future__ import annotations

import pytest

from app.mask_canvas import LAYER_NAMES

from .test_browser import CHROMIUM, browser_page, paint_stroke

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_layout_clear_switch_and_paint_quickly(studio, character_files):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    expect = sync_api.expect
    _, _, url = studio
    with browser_page() as page:
        page.goto(url)
        editor = page.locator("#mask-canvas")
        page.wait_for_selector("#mask-canvas canvas", timeout=60_000)
        expect(editor).to_contain_text(LAYER_NAMES[0], timeout=30_000)
        page.locator("#character-image-1 input[type=file]").set_input_files(str(character_files[0]))
        page.wait_for_selector("#character-image-1 img", timeout=30_000)

        page.get_by_role("button", name="Apply layout", exact=True).click()
        page.get_by_role("button", name="Clear masks", exact=True).click()
        editor.locator("button[aria-label='Show Layers']").click()
        editor.locator("button[aria-label='layer-1']").click()
        editor.locator("button[aria-label='Show Layers']").click()
        editor.locator("button[aria-label='Brush']").click()
        page.keyboard.press("Escape")
        paint_stroke(page, editor.locator("canvas").first, -0.2, 0.2, 0.0)

        # once the queue is idle the canvas is drawn, with no progress overlay left on it
        page.wait_for_timeout(3000)
        expect(editor.locator("canvas").first).to_be_visible()
        assert "processing" not in editor.inner_text().lower()
        page.get_by_role("button", name="Apply layout", exact=True).click()
        page.wait_for_timeout(2000)
        expect(editor.locator("canvas").first).to_be_visible()
        assert "processing" not in editor.inner_text().lower()
        expect(editor).to_contain_text(LAYER_NAMES[0])
