"""The Story tab in a real browser (Debian's chromium through Playwright) with the manga and webtoon examples on the
tiny models: a Japanese page read right to left, and a webtoon strip that scrolls in the tab. Saves the README's
``screenshots/manga-page.png`` (the exported page) and ``screenshots/webtoon-preview.png`` (the tab), under
``assets/`` with ``STUDIO_SCREENSHOTS=1``, else under ``test-artifacts/``."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from PIL import Image

from app.tabs import story_events as ev
from tests.app.test_browser import CHROMIUM, SCREENSHOT_ROOT, browser_page, save_small

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium")]
SHOTS = SCREENSHOT_ROOT / "screenshots"


def tiny(text: str, size: str) -> str:
    """An example made quick on the tiny models: a small pixel budget and two steps."""
    text = re.sub(r"^size: .*$", f"size: {size}", text, flags=re.M)
    return text.replace("---\n", "steps: 2\n---\n", 1)


def load_and_render(page, expect, example: str, size: str, summary: str, folder: str) -> float:
    """Loads `example`, makes it tiny, renders it; returns the render's wall time in seconds."""
    page.get_by_role("tab", name="Story", exact=True).click()
    text, _ = ev.load_example(example)  # the tab's story folder is the examples' folder already
    page.locator("#story-text textarea").fill(tiny(text, size))
    expect(page.locator("#story-summary")).to_contain_text(f"{size}, 2 steps", timeout=60_000)
    expect(page.locator("#story-summary")).to_contain_text(summary, timeout=60_000)
    started = time.perf_counter()
    page.get_by_role("button", name="Render", exact=True).click()
    # the notes name this story's render folder once its render and export are done
    done = page.locator("li").filter(has_text=re.compile(rf"Rendered \d+ panel.*stories/{folder}"))
    expect(done.first).to_be_visible(timeout=600_000)
    return time.perf_counter() - started


def test_a_manga_page_and_a_webtoon_strip_in_the_story_tab(studio):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    expect = sync_api.expect
    ctx, _, url = studio
    SHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#mask-canvas canvas", timeout=60_000)

        seconds = load_and_render(page, expect, "manga-page.story", "128x160", "read right to left, vertical",
                                  "赤いポストマン")
        print(f"manga page (5 panels, tiny models, 2 steps) rendered and exported in {seconds:.1f} s")
        exported = Path(ctx.settings.output_dir) / "stories" / "赤いポストマン" / "pages" / "page-01.png"
        with Image.open(exported) as shot:
            assert shot.size == (874, 1240)  # A5 at 150 dpi
            shot = shot.convert("RGB").resize((437, 620), Image.Resampling.LANCZOS)
            shot.quantize(256).save(SHOTS / "manga-page.png", optimize=True)

        seconds = load_and_render(page, expect, "webtoon-strip.story", "128x96", "layout webtoon, 800 px wide",
                                  "blue-s-long-jump")
        print(f"webtoon strip (5 panels, tiny models, 2 steps) rendered and exported in {seconds:.1f} s")
        # the preview is drawn again after the render: wait for the final one (of the rendered panels), then scroll it
        text, folder = ev.load_example("webtoon-strip.story")
        story = ev.parse_text(tiny(text, "128x96"), folder, ctx.paths)
        final = re.search(r'src="([^"]+)"', ev.strip_html(story, ev.render_dir_for(ctx, story, None)))[1]
        try:
            page.wait_for_function("(src) => document.querySelector('#story-strip-scroll img')?.getAttribute('src') "
                                   "=== src", arg=final, timeout=120_000)
        except sync_api.TimeoutError:
            raise AssertionError("the strip preview never showed the rendered panels") from None
        strip = page.locator("#story-strip-scroll")
        sizes = strip.evaluate("e => [e.scrollHeight, e.clientHeight]")
        assert sizes[0] > 2 * sizes[1], sizes  # a strip taller than its view: it scrolls
        page.set_viewport_size({"width": 1400, "height": 1750})  # a plain screenshot keeps the strip's scroll
        page.evaluate("window.scrollTo(0, 0)")
        strip = page.locator("#story-strip-scroll")
        strip.evaluate("e => { e.scrollTop = e.scrollHeight * 0.3 }")
        page.wait_for_timeout(500)
        assert strip.evaluate("e => e.scrollTop") > 0
        save_small(SHOTS / "webtoon-preview.png", page.screenshot())
