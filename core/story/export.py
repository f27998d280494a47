"""Export a rendered story: page PNGs, one PDF of all pages, a CBZ for comic readers, and a ZIP of everything
with the manifest.

Reads the panels the manifest records as done (panels not rendered, or failed, get a grey placeholder), lays out
the pages with `layout.compose_pages`, and writes every file atomically::

    OUT/pages/page-01.png ...   OUT/story.pdf   OUT/story.cbz   OUT/story.zip

The PDF is printed at the story's dpi with its words as real text (selectable and searchable, see
`core.story.pdf`); the CBZ is the page PNGs in reading order with a ``ComicInfo.xml``. A webtoon is one long
``OUT/strip.png``, and its pages are slices of it at most ``webtoon_slice`` pixels tall, cut between panels
where one fits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.limits import MAX_FILE_BYTES, MAX_STORY_BYTES
from core.io.path_policy import PathNotAllowedError
from core.story.drawing import compose_pages
from core.story.geometry import WEBTOON, plan_pages, webtoon_slices
from core.story.manifest import (
    DONE,
    MANIFEST_NAME,
    PAGES_DIR,
    RenderManifest,
    atomic_path,
    file_inside,
    load_manifest,
    write_json_atomic,
    write_png_atomic,
)
from core.story.model import Story, StoryError
from core.story.typeset import TextRun

PDF_NAME = "story.pdf"
CBZ_NAME = "story.cbz"
ZIP_NAME = "story.zip"
STRIP_NAME = "strip.png"
STORY_JSON_NAME = "story.json"
# Fixed entry times make the ZIP of the same files byte-identical (the PDF carries its own dates).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ExportResult:
    pages: list[Path]
    pdf: Path
    zip: Path
    missing_panels: list[int]
    cbz: Path | None = None
    strip: Path | None = None


def load_panel_images(story: Story, out_dir: str | os.PathLike, manifest: RenderManifest | None = None,
                      only: set[int] | None = None, max_side: int | None = None) -> dict[int, Image.Image]:
    """The images of the panels the manifest records as done, keyed by panel index (only the indices in `only`
    when given; each shrunk to fit `max_side` when given, one image in memory at full size at a time)."""
    out_dir = Path(out_dir)
    manifest = manifest if manifest is not None else load_manifest(out_dir)
    images = {}
    for index, record in manifest.panels.items():
        if record.status != DONE or not record.file or index >= len(story.panels):
            continue
        if only is not None and index not in only:
            continue
        path = file_inside(out_dir, record.file)
        if path is not None:
            with Image.open(path) as img:
                if max_side is not None:
                    img.thumbnail((max_side, max_side))
                images[index] = img.convert("RGB")
    return images


def _check_inside(out_dir: Path, path: Path) -> str:
    """The name of `path` relative to the render folder `out_dir`; `PathNotAllowedError` when it is a link, or
    leaves the folder through a linked folder or ``..``: nothing is ever read or written through a link."""
    root = out_dir.resolve()
    try:
        name = path.relative_to(out_dir).as_posix()
    except ValueError:
        name = None
    if name is None or ".." in Path(name).parts or path.is_symlink() or not path.resolve().is_relative_to(root):
        raise PathNotAllowedError(f"{path} is a link or outside the render folder {out_dir}: the export writes and "
                                  "packs only plain files inside it")
    return name


def _read_plain(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file, opened without following a link, at most `limit` of them."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PathNotAllowedError(f"{path} is not a plain file")
        if limit is not None and info.st_size > limit:
            raise PathNotAllowedError(f"{path} is {info.st_size:,} bytes: the limit is {limit:,}")
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise PathNotAllowedError(f"{path} grew past {limit:,} bytes while it was read")
    return data


def _pdf_date() -> time.struct_time:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # the reproducible-builds convention for fixed dates
    return time.gmtime(int(epoch) if epoch and epoch.isdigit() else None)


def write_pdf(pages: list[Image.Image], path: str | os.PathLike, dpi: int, title: str = "",
              texts: list | None = None) -> Path:
    """All `pages` in one PDF at `dpi` (so pages print at their size in millimetres), written atomically. With
    `texts` (one list of `layout.TextRun` per page, the pages drawn without them) the words are real PDF text."""
    from core.story.pdf import story_pdf

    if not pages:
        raise ValueError("write_pdf: no pages")
    data = story_pdf(pages, texts, dpi, title, _pdf_date())
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def comic_info(story: Story, pages: int) -> str:
    """The ``ComicInfo.xml`` of the CBZ (the comic readers' common metadata): a right-to-left story is marked
    as manga read right to left, so readers turn its pages that way."""
    from xml.sax.saxutils import escape

    manga = "YesAndRightToLeft" if story.reading == "right-to-left" else "No"
    return ('<?xml version="1.0" encoding="utf-8"?>\n<ComicInfo>\n'
            f"  <Title>{escape(story.title or 'Story')}</Title>\n  <PageCount>{pages}</PageCount>\n"
            f"  <Manga>{manga}</Manga>\n  <Notes>Made with InstantCharacter Studio</Notes>\n</ComicInfo>\n")


def write_cbz(story: Story, page_paths: list[Path], path: str | os.PathLike) -> Path:
    """A CBZ: the page PNGs in reading order (stored, not compressed again) and ``ComicInfo.xml``."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for page in page_paths:
            info = zipfile.ZipInfo(page.name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, _read_plain(page))
        info = zipfile.ZipInfo("ComicInfo.xml", date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, comic_info(story, len(page_paths)))
    return Path(path)


def write_zip(out_dir: str | os.PathLike, files: list[Path], path: str | os.PathLike) -> Path:
    """A ZIP of `files` (paths inside `out_dir`, stored under their relative names), written atomically."""
    out_dir = Path(out_dir)
    named = sorted({_check_inside(out_dir, Path(file)): Path(file) for file in files}.items())
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name, file in named:
            compress = zipfile.ZIP_STORED if file.suffix.lower() in (".png", ".pdf") else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = compress
            info.external_attr = 0o644 << 16
            archive.writestr(info, _read_plain(file))
    return Path(path)


def export_story(story: Story, out_dir: str | os.PathLike, manifest: RenderManifest | None = None) -> ExportResult:
    """Write page PNGs, the PDF and the ZIP for the panels rendered in `out_dir`.

    The ZIP holds the panels, pages, PDF, the manifest, the story as JSON (and its source text when it came from
    a file) and the character images, laid out so that the unpacked folder loads as a story. Only plain files
    inside `out_dir` are written and packed (never through a link); a character image is copied only when it is
    still the file the story was checked with (same SHA-256, at most MAX_FILE_BYTES).
    """
    out_dir = Path(out_dir)
    manifest = manifest if manifest is not None else load_manifest(out_dir)
    images = load_panel_images(story, out_dir, manifest)
    texts: list = []
    pages = compose_pages(story, images, texts=texts)  # the pictures, and their words for the PDF's text layer
    strip_path = None
    if story.layout == WEBTOON:
        strip_path = out_dir / STRIP_NAME
        _check_writable(out_dir, strip_path)
        write_png_atomic(pages[0], strip_path)
        pages, texts = slice_strip(story, pages[0], texts[0])

    page_paths = []
    for number, page in enumerate(pages, start=1):
        page_path = out_dir / PAGES_DIR / f"page-{number:02d}.png"
        _check_writable(out_dir, page_path)
        write_png_atomic(page, page_path)
        page_paths.append(page_path)
    for stale in (out_dir / PAGES_DIR).glob("page-*.png"):
        if stale not in page_paths:  # a shorter story than last time: drop pages that no longer exist
            stale.unlink()
    _check_writable(out_dir, out_dir / PDF_NAME)
    pdf = write_pdf(pages, out_dir / PDF_NAME, story.dpi, story.title, texts)
    del pages
    _check_writable(out_dir, out_dir / CBZ_NAME)
    cbz = write_cbz(story, page_paths, out_dir / CBZ_NAME)

    story_json = out_dir / STORY_JSON_NAME
    if not (out_dir / MANIFEST_NAME).is_file():
        _check_writable(out_dir, out_dir / MANIFEST_NAME)
        write_json_atomic(manifest.to_dict(), out_dir / MANIFEST_NAME)
    files = [out_dir / MANIFEST_NAME, pdf, *page_paths, *([strip_path] if strip_path is not None else [])]
    for record in manifest.panels.values():
        panel_file = file_inside(out_dir, record.file) if record.status == DONE else None
        if panel_file is not None:
            files.append(panel_file)

    # The story and its character images go in as a folder that loads on its own: images keep their path
    # relative to the story file when it stays inside that folder, so the story text loads unchanged too.
    source_dir = Path(story.source).resolve().parent if story.source is not None else None
    portable: dict[str, Path] = {}
    for name, character in story.characters.items():
        relative = Path("characters") / character.image.name
        if source_dir is not None:
            candidate = Path(os.path.relpath(character.image, source_dir))
            if not candidate.as_posix().startswith("../") and not candidate.is_absolute():
                relative = candidate
        target = out_dir / relative
        if target in portable.values() or relative.parts[0] in (PAGES_DIR, "panels") or target in files:
            target = out_dir / "characters" / f"{name}-{character.image.name}"
        content = _character_bytes(name, character.image, character.image_sha256)
        _check_writable(out_dir, target)
        if not target.is_file() or _read_plain(target, MAX_FILE_BYTES + 1) != content:
            with atomic_path(target) as tmp:
                tmp.write_bytes(content)
        portable[name] = target
        files.append(target)
    packed = dataclasses.replace(story, characters={
        name: dataclasses.replace(c, image=portable[name]) for name, c in story.characters.items()})
    _check_writable(out_dir, story_json)
    packed.save_json(story_json)
    files.append(story_json)
    if story.source is not None and Path(story.source).is_file() and Path(story.source).suffix != ".json":
        source_copy = out_dir / Path(story.source).name
        text = _read_plain(Path(story.source), MAX_STORY_BYTES)
        _check_writable(out_dir, source_copy)
        with atomic_path(source_copy) as tmp:
            tmp.write_bytes(text)
        files.append(source_copy)

    _check_writable(out_dir, out_dir / ZIP_NAME)
    archive = write_zip(out_dir, files, out_dir / ZIP_NAME)
    missing = [p.index for p in story.panels if p.index not in images]
    return ExportResult(pages=page_paths, pdf=pdf, zip=archive, missing_panels=missing, cbz=cbz, strip=strip_path)


def slice_strip(story: Story, strip: Image.Image, runs: list[TextRun]) -> tuple[list[Image.Image], list[list]]:
    """A webtoon strip cut into slices at most ``story.webtoon_slice`` px tall (between panels where one fits),
    with each slice's text runs moved into its own pixels."""
    cells = plan_pages(story)[0].cells
    cuts = [(a.y + a.h + b.y) // 2 for a, b in zip(cells, cells[1:])]
    slices, texts = [], []
    for top, bottom in webtoon_slices(strip.height, story.webtoon_slice, cuts):
        slices.append(strip.crop((0, top, strip.width, bottom)))
        texts.append([dataclasses.replace(run, baseline=run.baseline - top) for run in runs
                      if top <= run.baseline < bottom])
    return slices, texts


def _check_writable(out_dir: Path, path: Path) -> None:
    """Refuses to write `path` when it (or a folder on the way) is a link or leaves the render folder."""
    if path.is_symlink() or path.exists():
        _check_inside(out_dir, path)
        return
    parent = path.parent
    while not parent.exists() and parent != out_dir and parent != parent.parent:
        parent = parent.parent
    if parent.is_symlink() or not parent.resolve().is_relative_to(out_dir.resolve()):
        raise PathNotAllowedError(f"{path} is outside the render folder {out_dir} (a linked folder?): "
                                  "the export writes only inside it")


def _character_bytes(name: str, image: Path, digest: str) -> bytes:
    """The content of a character image, when it is still the file the story was checked with."""
    try:
        content = _read_plain(image, MAX_FILE_BYTES)
    except OSError as exc:
        raise StoryError(f"cannot read the image of [{name}]: {exc.strerror or exc}") from None
    except PathNotAllowedError as exc:
        raise StoryError(f"the image of [{name}] cannot be packed: {exc}") from None
    if digest and hashlib.sha256(content).hexdigest() != digest:
        raise StoryError(f"the image of [{name}] changed since the story was read: check the story again")
    return content
