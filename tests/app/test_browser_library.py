"""The Library in a real browser (issue 22): save a character to the library, see its image in the Library tab (no
"Error" badge: the library folder is served), pick it in Generate's "From library", and add it to a story. Saves a
screenshot of the Library tab with the saved character (``screenshots/library-saved.png``, in ``assets/`` with
``STUDIO_SCREENSHOTS=1`` for the README)."""

from __future__ import annotations

import re

import pytest

from .test_browser import CHROMIUM, ROOT, SCREENSHOT_ROOT, browser_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _choose(page, dropdown: str, option: str) -> None:
    """Opens a Gradio dropdown (by its elem_id) and clicks ``option`` in its list."""
    page.locator(f"#{dropdown} input").first.click()
    page.get_by_role("option", name=option, exact=True).first.click(timeout=60_000)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_save_see_pick_and_tell_a_story_with_a_library_character(studio, character_files):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    expect = sync_api.expect
    ctx, _, url = studio
    copied = ROOT / "assets" / "stories" / "characters" / "Pip.png"
    copied_before = copied.exists()
    with browser_page() as page:
        try:
            page.goto(url)
            page.get_by_role("tab", name="Library", exact=True).click(timeout=120_000)  # busy CPUs: the page can lag
            page.locator("#library-image input[type=file]").set_input_files(str(character_files[1]))
            page.wait_for_selector("#library-image img", timeout=30_000)
            page.locator("#library-name textarea, #library-name input").first.fill("Pip")
            page.locator("#library-save").click()
            expect(page.locator("#library-gallery img").first).to_be_visible(timeout=60_000)
            expect(page.locator("#library-gallery")).to_contain_text("Pip · scale 0.9")
            assert "Pip" in ctx.library.names()
            assert page.get_by_text("Error", exact=True).count() == 0  # the image is served: no badge
            page.wait_for_timeout(2500)  # the thumbnail's fade-in and the "Saved" toast are over
            shots = SCREENSHOT_ROOT / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "library-saved.png"))

            page.get_by_role("tab", name="Generate", exact=True).click(timeout=120_000)  # busy CPUs: the page can lag
            _choose(page, "character-library-1", "Pip")
            expect(page.locator("#character-image-1 img").first).to_be_visible(timeout=60_000)
            expect(page.locator("#character-name-1 textarea, #character-name-1 input").first).to_have_value(
                "Pip", timeout=30_000)
            assert page.get_by_text("Error", exact=True).count() == 0

            page.get_by_role("tab", name="Story", exact=True).click(timeout=120_000)  # busy CPUs: the page can lag
            _choose(page, "story-library", "Pip")
            page.locator("#story-add-character").click()
            story = page.locator("#story-text textarea")
            expect(story).to_have_value(re.compile(r"\ncharacter Pip: characters/Pip\.png\n"), timeout=60_000)
            assert copied.is_file()
            assert page.get_by_text("Error", exact=True).count() == 0
        finally:
            if not copied_before:
                copied.unlink(missing_ok=True)
                if copied.parent.is_dir() and not any(copied.parent.iterdir()):
                    copied.parent.rmdir()
