"""Training datasets: reading, validating and serving rows.

Three layouts are read:

* **unpaired**, a folder: every image (``.png``, ``.jpg``, ``.jpeg``, ``.webp``) with a sidecar ``.txt`` caption of
  the same stem; or a JSONL file of ``{"image": path, "caption": text}`` rows. The reference is the image itself
  (stage 1, reconstruction).
* **paired**, JSONL: ``{"reference": path, "target": path, "caption": text}``: the same character in another pose
  or scene.
* **multi-character paired**, JSONL: ``{"references": [{"name": "Ann", "image": path, "mask": path?, "box": [x0, y0,
  x1, y1]?}, ...], "target": path, "caption": "[Ann] waves at [Bob]"}``. Boxes are fractions of the target's size;
  masks are greyscale images (white = the character's region).

Paths are relative to the JSONL file's folder. :func:`validate` reads everything and lists every bad row with its
line number (or file name in a folder), so a dataset can be fixed in one pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from core.io.images import ImageInputError, load_image
from core.conditioning.prompt import TAG
from core.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_NAME = re.compile(r"^[^\[\]\n]{1,40}$")


@dataclass(frozen=True)
class Reference:
    """One character reference of a row: its image, its ``[Name]`` and where it goes in the target."""

    image: Path
    name: str | None = None
    mask: Path | None = None
    box: tuple[float, float, float, float] | None = None  # fractions of the target (x0, y0, x1, y1)


@dataclass(frozen=True)
class Example:
    """One training row. ``references`` empty means the target is its own reference (unpaired)."""

    target: Path
    caption: str
    references: tuple[Reference, ...] = ()
    where: str = ""  # "file.jsonl:12" or the image file name, for messages

    @property
    def paired(self) -> bool:
        return bool(self.references)


@dataclass
class Problem:
    """One bad row: ``where`` is ``"file:line"`` (JSONL) or the image's file name (folder)."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class ValidationReport:
    """What :func:`validate` found: the good rows and every problem."""

    source: str
    examples: list[Example] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.examples)

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.examples)} good row(s), {len(self.problems)} problem(s)"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class DatasetError(UserError, ValueError):
    """A dataset with bad rows; ``report`` holds every problem."""

    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__(report.summary())


# ---------------------------------------------------------------------- reading
def _check_image(path: Path, what: str, problems: list[str], check_images: bool) -> None:
    if not path.is_file():
        problems.append(f"{what} not found: {path}")
        return
    if check_images:
        try:
            load_image(path)
        except ImageInputError as exc:
            problems.append(f"{what} unreadable: {exc}")


def _parse_box(value, problems: list[str], name: str):
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        problems.append(f"reference [{name}]: box must be [x0, y0, x1, y1] fractions, got {value!r}")
        return None
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        problems.append(f"reference [{name}]: box {value} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        return None
    return (x0, y0, x1, y1)


def _caption(row: dict, problems: list[str]) -> str:
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        problems.append("missing caption" if caption is None else f"empty or non-text caption: {caption!r}")
        return ""
    return caption.strip()


def _row_to_example(row, base: Path, where: str, check_images: bool) -> tuple[Example | None, list[str]]:
    problems: list[str] = []
    if not isinstance(row, dict):
        return None, [f"row must be a JSON object, got {type(row).__name__}"]
    caption = _caption(row, problems)
    references: list[Reference] = []
    if "references" in row or "reference" in row:
        target_key = "target"
        raw_refs = row.get("references")
        if raw_refs is None:
            raw_refs = [{"image": row["reference"], "name": row.get("name")}]
        if not isinstance(raw_refs, list) or not raw_refs:
            problems.append("references must be a non-empty list")
            raw_refs = []
        multi = len(raw_refs) > 1
        seen: set[str] = set()
        for i, ref in enumerate(raw_refs):
            if isinstance(ref, str):
                ref = {"image": ref}
            if not isinstance(ref, dict) or not isinstance(ref.get("image"), str):
                problems.append(f"reference {i + 1}: needs an \"image\" path")
                continue
            name = ref.get("name")
            label = name or str(i + 1)
            if name is not None and (not isinstance(name, str) or not _NAME.match(name.strip())):
                problems.append(f"reference {i + 1}: name {name!r} must be 1-40 characters without brackets")
                name = None
            elif name is not None:
                name = name.strip()
                if name.lower() in seen:
                    problems.append(f"reference [{name}]: two references share this name")
                seen.add(name.lower())
            if multi and name is None:
                problems.append(f"reference {i + 1}: several references need a name each")
            image = base / ref["image"]
            _check_image(image, f"reference [{label}] image", problems, check_images)
            mask = None
            if ref.get("mask") is not None:
                mask = base / str(ref["mask"])
                _check_image(mask, f"reference [{label}] mask", problems, check_images)
            box = _parse_box(ref.get("box"), problems, label)
            references.append(Reference(image, name, mask, box))
        names = {r.name.lower() for r in references if r.name}
        for match in TAG.finditer(caption):
            tag = match.group(1).strip()
            if tag.lower() not in names:
                problems.append(f"caption tag [{tag}] has no reference of that name")
    else:
        target_key = "image" if "image" in row else "target"
        if TAG.search(caption):
            problems.append(f"caption tag {TAG.search(caption).group(0)} in an unpaired row (no references)")
    target = row.get(target_key)
    if not isinstance(target, str) or not target:
        problems.append(f"missing \"{target_key}\" path")
        return None, problems
    target_path = base / target
    _check_image(target_path, "target image" if target_key == "target" else "image", problems, check_images)
    if problems:
        return None, problems
    return Example(target_path, caption, tuple(references), where), problems


def _read_jsonl(path: Path, report: ValidationReport, check_images: bool) -> None:
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report.problems.append(Problem(str(path), f"cannot read ({exc})"))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path.name}:{number}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            report.problems.append(Problem(where, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        example, problems = _row_to_example(row, base, where, check_images)
        report.problems += [Problem(where, m) for m in problems]
        if example is not None:
            report.examples.append(example)


def _read_folder(folder: Path, report: ValidationReport, check_images: bool) -> None:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for image in images:
        problems: list[str] = []
        sidecar = image.with_suffix(".txt")
        caption = ""
        if not sidecar.is_file():
            problems.append(f"missing caption (no {sidecar.name})")
        else:
            caption = sidecar.read_text(encoding="utf-8", errors="replace").strip()
            if not caption:
                problems.append(f"empty caption in {sidecar.name}")
        _check_image(image, "image", problems, check_images)
        report.problems += [Problem(image.name, m) for m in problems]
        if not problems:
            report.examples.append(Example(image, caption, (), image.name))
    stems = {p.stem for p in images}
    for orphan in sorted(folder.glob("*.txt")):
        if orphan.stem not in stems:
            report.problems.append(Problem(orphan.name, "caption without an image of the same name"))


def validate(path: str | Path, kind: str | None = None, check_images: bool = True) -> ValidationReport:
    """Reads a dataset (folder or JSONL) and reports every bad row.

    Args:
        path: a folder of images with ``.txt`` captions, or a JSONL file.
        kind: ``"unpaired"`` or ``"paired"`` to also require that layout; ``None`` accepts either.
        check_images: decode every image (slower, catches truncated files).
    """
    path = Path(path)
    report = ValidationReport(str(path))
    if path.is_dir():
        _read_folder(path, report, check_images)
    elif path.is_file():
        _read_jsonl(path, report, check_images)
    else:
        report.problems.append(Problem(str(path), "dataset not found (give a folder or a .jsonl file)"))
        return report
    if kind == "paired":
        for example in report.examples:
            if not example.paired:
                report.problems.append(Problem(example.where, "unpaired row in a paired dataset (no reference)"))
    elif kind == "unpaired":
        for example in report.examples:
            if example.paired:
                report.problems.append(Problem(example.where, "paired row in an unpaired dataset"))
    if not report.examples and not report.problems:
        report.problems.append(Problem(str(path), "dataset is empty"))
    return report


def load_dataset(path: str | Path, kind: str | None = None, check_images: bool = True) -> list[Example]:
    """The rows of a dataset; raises :class:`DatasetError` listing every bad row if there is any."""
    report = validate(path, kind, check_images)
    if not report.ok:
        raise DatasetError(report)
    return report.examples


# ---------------------------------------------------------------------- serving
def load_target(path: Path, resolution: int) -> Image.Image:
    """The target image scaled to cover ``resolution`` x ``resolution`` and centre-cropped."""
    return cover_crop(load_image(path), resolution)


def cover_crop(image: Image.Image, resolution: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """``image`` scaled to cover ``resolution`` x ``resolution`` and centre-cropped (targets and their masks)."""
    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), resample)
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


class StageSchedule:
    """Which rows each optimizer step of a stage uses: deterministic from (seed, stage, step).

    Rows are drawn epoch by epoch in a seeded permutation, so the data position is just the step number: resuming
    at step ``k`` serves exactly what an uninterrupted run would. With two datasets (``"both"``), each slot of the
    global batch picks paired or unpaired with ``paired_fraction``, also seeded.
    """

    def __init__(self, unpaired: list[Example], paired: list[Example], data: str, batch_size: int, seed: int,
                 stage_index: int, paired_fraction: float = 0.5):
        import torch

        self.pools = {"unpaired": unpaired, "paired": paired}
        self.data, self.batch_size, self.fraction = data, batch_size, paired_fraction
        self._torch = torch
        self.seed = seed * 1000 + stage_index

    def _pool_order(self, pool: str, epoch: int) -> list[int]:
        g = self._torch.Generator().manual_seed(self.seed * 7919 + epoch * 2 + (pool == "paired"))
        return self._torch.randperm(len(self.pools[pool]), generator=g).tolist()

    def _pick(self, pool: str, position: int) -> Example:
        n = len(self.pools[pool])
        epoch, offset = divmod(position, n)
        return self.pools[pool][self._pool_order(pool, epoch)[offset]]

    def global_batch(self, step: int) -> list[Example]:
        """The ``batch_size`` rows of optimizer step ``step`` (0-based within the stage)."""
        if self.data != "both":
            start = step * self.batch_size
            return [self._pick(self.data, start + i) for i in range(self.batch_size)]
        out = []
        for i in range(self.batch_size):
            slot = step * self.batch_size + i
            g = self._torch.Generator().manual_seed(self.seed * 104729 + slot)
            pool = "paired" if float(self._torch.rand(1, generator=g)) < self.fraction else "unpaired"
            # each pool advances by its own slot count, so rows are still drawn without replacement per epoch
            out.append(self._pick(pool, slot))
        return out
