"""A real browser (Debian's chromium through Playwright): upload a character, paint a mask stroke on its layer,
Generate, and see the image in the gallery with the painted mask in its metadata. Saves ``test-artifacts/studio.png``
and the README screenshot ``screenshot.png``; a screenshot of every tab goes to ``screenshots/`` (the
README shows them; in ``assets/`` with ``STUDIO_SCREENSHOTS=1``, else in ``test-artifacts/``), after checking the rough edges an illustrator met there are gone."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest

from app.mask_canvas import LAYER_NAMES

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
# The README's screenshots are retaken into assets/ only when asked (STUDIO_SCREENSHOTS=1), so a test run leaves the
# tree clean; otherwise they go to test-artifacts/ beside the other browser artifacts.
SCREENSHOT_ROOT = ROOT / "assets" if os.environ.get("STUDIO_SCREENSHOTS") == "1" else ROOT / "test-artifacts"
GRID = 32  # the saved mask is checked on a GRID x GRID grid

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """A page of Debian's chromium (through Playwright) ``width`` x ``height``; the browser closes afterwards."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


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


def record_texts(locator) -> None:
    """Records every text ``locator``'s element shows from now on (:func:`wait_for_shown_text` reads them): a text
    shown for less than Playwright's polling interval is seen too."""
    locator.evaluate("""(e) => { e.shownTexts = [e.textContent.trim()];
        new MutationObserver(() => e.shownTexts.push(e.textContent.trim()))
            .observe(e, {childList: true, subtree: true, characterData: true}); }""")


def wait_for_shown_text(locator, text: str, timeout: float = 30_000) -> None:
    """Waits until the element :func:`record_texts` watches has shown ``text``; fails with what it showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.page.wait_for_function("([e, text]) => e.shownTexts.includes(text)",
                                       arg=[locator.element_handle(), text], timeout=timeout)
    except PlaywrightTimeout:
        raise AssertionError(f"{text!r} never showed; shown: {locator.evaluate('e => e.shownTexts')}") from None


def run_event(locator, action) -> None:
    """Runs ``action`` (a click that starts an event with ``locator``'s component among its outputs) and waits until
    that event is over: the component's status tracker went busy and is hidden again, however quickly that went."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tracker = locator.locator("[data-testid=status-tracker]").first
    tracker.evaluate("""(t) => { t.wasBusy = false;
        new MutationObserver(() => { t.wasBusy ||= !t.classList.contains('hide'); })
            .observe(t, {attributes: true, attributeFilter: ['class']}); }""")
    action()
    try:
        locator.page.wait_for_function("(t) => t.wasBusy && t.classList.contains('hide')",
                                       arg=tracker.element_handle(), timeout=60_000)
    except PlaywrightTimeout:
        raise AssertionError(f"the event updating {locator} did not run and finish in 60 s") from None


def wait_for_gallery_image(page, timeout: float = 120_000) -> None:
    """Waits until the Results gallery shows an image; when none comes, fails with the errors the page showed (a
    refused job never fills the gallery, and a timeout alone would not say why)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_selector("#gallery img", timeout=timeout)
    except PlaywrightTimeout:
        errors = [t.inner_text().strip() for t in page.locator(".toast-body.error").all()]
        raise AssertionError(f"no image in the gallery after {timeout / 1000:.0f} s; the page's errors: "
                             f"{errors}") from None


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_generate_in_a_real_browser(studio, character_files):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    from core.conditioning.masks import RoutingMask
    from core.io.metadata import read_record

    ctx, _, url = studio
    before = set(Path(ctx.settings.output_dir).glob("*.png"))
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with browser_page() as page:
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
        wait_for_gallery_image(page)
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "studio.png"), full_page=True)
        # the README screenshot: characters, the painted canvas and the gallery, at the viewport's width
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(SCREENSHOT_ROOT / "screenshot.png"), full_page=True,
                        clip={"x": 0, "y": 0, "width": 1400, "height": 1300})
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


TABS = ("Generate", "Story", "Trainer", "Library", "History", "Settings")
SHOTS = SCREENSHOT_ROOT / "screenshots"


def save_small(path: Path, png: bytes) -> None:
    """A screenshot as a 256-colour PNG: the studio's flat colours survive, the file stays small."""
    import io

    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_every_tab_without_the_rough_edges(studio):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    expect = sync_api.expect
    _, _, url = studio
    SHOTS.mkdir(parents=True, exist_ok=True)
    with browser_page() as page:
        page.goto(url)
        page.wait_for_selector("#mask-canvas canvas", timeout=60_000)
        page.locator("#character-image-1 input[type=file]").set_input_files(
            str(ROOT / "assets" / "stories" / "characters" / "red.png"))
        page.wait_for_selector("#character-image-1 img", timeout=30_000)
        page.locator("#character-name-1 textarea, #character-name-1 input").first.fill("Red")
        # one character row, one tag button; it names the character
        expect(page.get_by_role("button", name="[Red]")).to_be_visible(timeout=10_000)
        for hidden in ("[Character 2]", "[Character 3]", "[Character 4]"):
            expect(page.get_by_role("button", name=hidden)).to_be_hidden()
        # a typed size is no longer the preset's
        width = page.locator("input[aria-label='Width']").first
        width.fill("320")
        width.press("Tab")
        expect(page.locator("#size-preset input")).to_have_value("Custom", timeout=10_000)
        assert page.get_by_text("True CFG", exact=True).count() == 1

        page.locator("#prompt textarea").fill("[Red] on a hill")
        page.wait_for_timeout(1000)
        for tab in TABS:
            page.get_by_role("tab", name=tab, exact=True).click()
            page.wait_for_timeout(1500)
            if tab == "Story":
                expect(page.locator("#story-summary")).to_contain_text("1 page", timeout=10_000)
            if tab == "Settings":
                assert "--models tiny" not in page.inner_text("body")
            page.evaluate("window.scrollTo(0, 0)")
            save_small(SHOTS / f"{tab.lower()}.png", page.screenshot(full_page=True))
        page.get_by_role("tab", name="Generate", exact=True).click()
        # Cancel during a long run: "Cancelling..." until the job is over, then the next job runs
        page.locator("#size-preset input").click()
        page.get_by_role("option", name="Square 1024x1024").click()
        expect(page.locator("input[aria-label='Width']").first).to_have_value("1024", timeout=10_000)
        page.locator("#prompt textarea").fill("[Red] on a hill")
        steps = page.get_by_role("spinbutton", name=re.compile("Steps"))
        steps.fill("100")
        steps.press("Enter")
        page.locator("#generate").click()
        # cancel once the job is denoising (its progress names the step), not after a fixed wait
        expect(page.locator("#gallery").get_by_text(re.compile(r"step \d+/100"))).to_be_visible(timeout=120_000)
        cancel = page.get_by_role("button", name=re.compile("^Cancel"))
        record_texts(cancel)  # "Cancelling..." lasts about one step: it may come and go between two polls
        cancel.click()
        wait_for_shown_text(cancel, "Cancelling...")
        expect(cancel).to_have_text("Cancel", timeout=180_000)
        expect(page.locator("#notes")).to_contain_text("cancelled", timeout=30_000)
        page.locator("#size-preset input").click()
        page.get_by_role("option", name="Tiny test 128x128").click()
        steps.fill("4")
        steps.press("Enter")
        expect(page.locator("input[aria-label='Width']").first).to_have_value("128", timeout=10_000)
        page.locator("#generate").click()
        wait_for_gallery_image(page)
    for tab in TABS:
        assert (SHOTS / f"{tab.lower()}.png").stat().st_size < 400_000
