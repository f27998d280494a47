"""Export a rendered story: page PNGs, one PDF of all pages, and a ZIP of everything with the manifest.

Reads the panels the manifest records as done (panels not rendered, or failed, get a grey placeholder), lays out
the pages with `layout.compose_pages`, and writes every file atomically::

    OUT/pages/page-01.png ...   OUT/story.pdf   OUT/story.zip
"""

from __future__ import annotations

import dataclasses
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core.story.format import Story
from core.story.layout import compose_pages
from core.story.manifest import (
    DONE,
    MANIFEST_NAME,
    RenderManifest,
    atomic_path,
    load_manifest,
    write_json_atomic,
    write_png_atomic,
)

PAGES_DIR = "pages"
PDF_NAME = "story.pdf"
ZIP_NAME = "story.zip"
STORY_JSON_NAME = "story.json"
# Fixed entry times make the ZIP of the same files byte-identical (the PDF carries its own dates).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ExportResult:
    pages: list[Path]
    pdf: Path
    zip: Path
    missing_panels: list[int]


def load_panel_images(story: Story, out_dir: str | os.PathLike,
                      manifest: RenderManifest | None = None) -> dict[int, Image.Image]:
    """The images of the panels the manifest records as done, keyed by panel index."""
    out_dir = Path(out_dir)
    manifest = manifest if manifest is not None else load_manifest(out_dir)
    images = {}
    for index, record in manifest.panels.items():
        if record.status != DONE or not record.file or index >= len(story.panels):
            continue
        path = out_dir / record.file
        if path.is_file():
            with Image.open(path) as img:
                images[index] = img.convert("RGB")
    return images


def _pdf_date() -> time.struct_time:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # the reproducible-builds convention for fixed dates
    return time.gmtime(int(epoch) if epoch and epoch.isdigit() else None)


def write_pdf(pages: list[Image.Image], path: str | os.PathLike, dpi: int, title: str = "") -> Path:
    """All `pages` in one PDF at `dpi` (so pages print at their size in millimetres), written atomically."""
    if not pages:
        raise ValueError("write_pdf: no pages")
    date = _pdf_date()
    with atomic_path(path) as tmp:
        first, *rest = [page.convert("RGB") for page in pages]
        first.save(tmp, format="PDF", save_all=True, append_images=rest, resolution=float(dpi),
                   title=title or "Story", creator="InstantCharacter Studio", creationDate=date, modDate=date)
    return Path(path)


def write_zip(out_dir: str | os.PathLike, files: list[Path], path: str | os.PathLike) -> Path:
    """A ZIP of `files` (paths inside `out_dir`, stored under their relative names), written atomically."""
    out_dir = Path(out_dir)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for file in sorted(set(files), key=lambda f: f.relative_to(out_dir).as_posix()):
            name = file.relative_to(out_dir).as_posix()
            compress = zipfile.ZIP_STORED if file.suffix.lower() in (".png", ".pdf") else zipfile.ZIP_DEFLATED
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = compress
            info.external_attr = 0o644 << 16
            archive.writestr(info, file.read_bytes())
    return Path(path)


def export_story(story: Story, out_dir: str | os.PathLike, manifest: RenderManifest | None = None) -> ExportResult:
    """Write page PNGs, the PDF and the ZIP for the panels rendered in `out_dir`.

    The ZIP holds the panels, pages, PDF, the manifest, the story as JSON (and its source text when it came from
    a file) and the character images, laid out so that the unpacked folder loads as a story.
    """
    out_dir = Path(out_dir)
    manifest = manifest if manifest is not None else load_manifest(out_dir)
    images = load_panel_images(story, out_dir, manifest)
    pages = compose_pages(story, images)

    page_paths = []
    for number, page in enumerate(pages, start=1):
        page_path = out_dir / PAGES_DIR / f"page-{number:02d}.png"
        write_png_atomic(page, page_path)
        page_paths.append(page_path)
    for stale in (out_dir / PAGES_DIR).glob("page-*.png"):
        if stale not in page_paths:  # a shorter story than last time: drop pages that no longer exist
            stale.unlink()
    pdf = write_pdf(pages, out_dir / PDF_NAME, story.dpi, story.title)

    story_json = out_dir / STORY_JSON_NAME
    if not (out_dir / MANIFEST_NAME).is_file():
        write_json_atomic(manifest.to_dict(), out_dir / MANIFEST_NAME)
    files = [out_dir / MANIFEST_NAME, pdf, *page_paths]
    files += [out_dir / r.file for r in manifest.panels.values()
              if r.status == DONE and r.file and (out_dir / r.file).is_file()]

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
        if not target.is_file() or target.read_bytes() != character.image.read_bytes():
            with atomic_path(target) as tmp:
                tmp.write_bytes(character.image.read_bytes())
        portable[name] = target
        files.append(target)
    packed = dataclasses.replace(story, characters={
        name: dataclasses.replace(c, image=portable[name]) for name, c in story.characters.items()})
    packed.save_json(story_json)
    files.append(story_json)
    if story.source is not None and Path(story.source).is_file() and Path(story.source).suffix != ".json":
        source_copy = out_dir / Path(story.source).name
        with atomic_path(source_copy) as tmp:
            tmp.write_bytes(Path(story.source).read_bytes())
        files.append(source_copy)

    archive = write_zip(out_dir, files, out_dir / ZIP_NAME)
    missing = [p.index for p in story.panels if p.index not in images]
    return ExportResult(pages=page_paths, pdf=pdf, zip=archive, missing_panels=missing)
