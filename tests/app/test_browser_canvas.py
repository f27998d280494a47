"""The routing canvas under quick clicks in a real browser (issue 22, item 6): Apply layout, Clear masks, switch
layer and paint within a second; the canvas stays drawn (no "processing" overlay left on it) and Apply layout
still works afterwards."""

from __future__ import annotations

import time

import pytest

from app.mask_canvas import LAYER_NAMES

from .test_browser import CHROMIUM, browser_page, paint_stroke

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The text of the progress overlay that a user sees over the canvas. Gradio keeps a status tracker in the editor's
# DOM even for events with show_progress="hidden" (it is drawn at opacity 0, and may read "processing | 20.0/0.3s"
# long after the event is over), so the page's text alone cannot tell a shown overlay from a hidden one.
SHOWN_PROGRESS = """(root) => [...root.querySelectorAll('.progress-text, .meta-text, .meta-text-center, .progress-level')]
  .filter((el) => {
    for (let e = el; e && e !== root.parentElement; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === 'none' || s.visibility === 'hidden' || Number(s.opacity) === 0) return false;
    }
    return el.offsetWidth > 0 && el.offsetHeight > 0;
  })
  .map((el) => el.textContent.trim()).filter(Boolean).join(' | ')"""


def wait_until_no_overlay(editor, timeout: float = 30.0) -> None:
    """Waits until no progress overlay is shown over ``editor``; fails with the overlay's text after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (shown := editor.evaluate(SHOWN_PROGRESS)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not shown, f"a progress overlay stays over the canvas: {shown!r}"


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
        wait_until_no_overlay(editor)
        expect(editor.locator("canvas").first).to_be_visible()
        page.get_by_role("button", name="Apply layout", exact=True).click()
        page.wait_for_timeout(1000)
        wait_until_no_overlay(editor)
        expect(editor.locator("canvas").first).to_be_visible()
        expect(editor).to_contain_text(LAYER_NAMES[0])
