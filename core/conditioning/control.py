"""Control images: what the picture should follow (a pose skeleton, a depth map, edges, a gray image).

A :class:`ControlImage` is one control input of a generation: the image, its kind (``pose``, ``depth``, ``canny``,
``soft-edge``, ``gray``), the conditioning scale the ControlNet's residuals are multiplied by, and the part of the
denoising it acts on (``start`` and ``end``, fractions of the steps that run, as diffusers'
``control_guidance_start`` / ``control_guidance_end``). Every rule about them is here: the checks (one-line
:class:`ControlError` naming the bad value), the ``KIND:FILE[:SCALE]`` spec of the command line and stories, the
fit to the output size, and the form a PNG record stores (the image saved beside the output as
``control-<digest[:16]>.png``, as an edit's source is).

The ControlNet that reads them runs in :mod:`core.models.controlnet`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from core.errors import UserError
from core.io.images import load_image, rgb_digest

CONTROL_KINDS = ("pose", "depth", "canny", "soft-edge", "gray")
# the names users write for the same kinds
KIND_ALIASES = {"openpose": "pose", "skeleton": "pose", "edge": "canny", "edges": "canny", "softedge": "soft-edge",
                "soft_edge": "soft-edge", "soft edge": "soft-edge", "hed": "soft-edge", "grey": "gray",
                "grayscale": "gray"}
# Union-Pro-2.0's card recommends 0.3-0.8 (pose 0.9); above 2 the residuals swamp the base model
MIN_SCALE, MAX_SCALE = 0.0, 2.0
DEFAULT_SCALE = 0.7
MAX_CONTROLS = 4
_FILE_NAME = re.compile(r"^control-[0-9a-f]{16}\.png$")


class ControlError(UserError, ValueError):
    """A control input that cannot be used; the message (one line) names it and the bad value."""


def check_kind(kind, name: str = "control kind") -> str:
    """The kind's canonical name (``soft edge`` -> ``soft-edge``); :class:`ControlError` for an unknown one."""
    text = str(kind).strip().lower() if isinstance(kind, str) else ""
    text = KIND_ALIASES.get(text, text)
    if text not in CONTROL_KINDS:
        raise ControlError(f"{name} {kind!r} unknown: use one of {', '.join(CONTROL_KINDS)}")
    return text


def check_scale(scale, name: str = "control scale") -> float:
    """A conditioning scale from ``MIN_SCALE`` to ``MAX_SCALE`` as a float."""
    try:
        value = float(scale) if not isinstance(scale, bool) else float("nan")
    except (TypeError, ValueError):
        raise ControlError(f"{name} {scale!r} is not a number: use {MIN_SCALE:g} to {MAX_SCALE:g}") from None
    if not MIN_SCALE <= value <= MAX_SCALE:
        raise ControlError(f"{name} {scale!r} is out of range: use {MIN_SCALE:g} to {MAX_SCALE:g} "
                           "(0.3-0.8 usually)")
    return value


def check_range(start, end, name: str = "control steps") -> tuple[float, float]:
    """``(start, end)``, fractions of the steps from 0 to 1 with ``start < end``."""
    try:
        a, b = float(start), float(end)
    except (TypeError, ValueError):
        raise ControlError(f"{name} {start!r}-{end!r}: give two numbers from 0 to 1") from None
    if not (0.0 <= a < b <= 1.0):
        raise ControlError(f"{name} {a:g}-{b:g}: the range must be within 0-1 and start before it ends")
    return a, b


@dataclass(frozen=True)
class ControlImage:
    """One control input.

    Attributes:
        image: the control image (RGB), as the ControlNet reads it (already a skeleton, depth map, edge map...).
        kind: one of :data:`CONTROL_KINDS`.
        scale: the conditioning scale (``MIN_SCALE`` to ``MAX_SCALE``).
        start, end: the fraction of the steps that run from which, and up to which, it acts.
    """

    image: Image.Image
    kind: str = "pose"
    scale: float = DEFAULT_SCALE
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        if not isinstance(self.image, Image.Image):
            raise ControlError(f"the {self.kind} control image is a {type(self.image).__name__}, not an image")
        object.__setattr__(self, "kind", check_kind(self.kind))
        object.__setattr__(self, "scale", check_scale(self.scale, f"the {self.kind} control scale"))
        start, end = check_range(self.start, self.end, f"the {self.kind} control's steps")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        if self.image.mode != "RGB":
            object.__setattr__(self, "image", self.image.convert("RGB"))

    @property
    def digest(self) -> str:
        return rgb_digest(self.image)

    @property
    def file_name(self) -> str:
        """The name the image is saved under beside an output PNG."""
        return f"control-{self.digest[:16]}.png"

    def fitted(self, width: int, height: int, label: str = "") -> tuple["ControlImage", list[str]]:
        """This control at the output size: resized when it differs, with a note."""
        if self.image.size == (width, height):
            return self, []
        note = (f"the {label or self.kind} control image is {self.image.width}x{self.image.height}: resized to "
                f"{width}x{height} (the output size)")
        resized = self.image.resize((width, height), Image.Resampling.LANCZOS)
        return ControlImage(resized, self.kind, self.scale, self.start, self.end), [note]

    def record(self) -> dict:
        """The control as a PNG record stores it (the image itself is saved beside, see :attr:`file_name`)."""
        return {"kind": self.kind, "scale": self.scale, "start": self.start, "end": self.end,
                "sha256": self.digest, "file": self.file_name}

    @classmethod
    def from_record(cls, record: dict, image: Image.Image) -> "ControlImage":
        """The control a record's entry (:func:`check_record`) describes, with its ``image`` (as
        :func:`core.io.metadata.read_control_image` reads it from beside the PNG)."""
        return cls(image, record["kind"], record["scale"], record["start"], record["end"])


def check_record(value, label: str) -> dict:
    """A control as stored in a PNG record, every field checked; :class:`ControlError` naming the bad one."""
    if not isinstance(value, dict):
        raise ControlError(f"{label} must be an object, got {type(value).__name__}")
    digest, name = value.get("sha256"), value.get("file")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ControlError(f"{label}: sha256 must be a sha256 hex digest")
    if not isinstance(name, str) or not _FILE_NAME.match(name) or name != f"control-{digest[:16]}.png":
        raise ControlError(f"{label}: file must be control-<digest>.png beside the image")
    kind = check_kind(value.get("kind"), f"{label}'s kind")
    start, end = check_range(value.get("start", 0.0), value.get("end", 1.0), f"{label}'s steps")
    return {"kind": kind, "scale": check_scale(value.get("scale", DEFAULT_SCALE), f"{label}'s scale"),
            "start": start, "end": end, "sha256": digest, "file": name}


def parse_control_spec(spec: str, option: str = "--control") -> tuple[str, str, float]:
    """``KIND:FILE[:SCALE]`` as ``(kind, file, scale)``; the scale defaults to :data:`DEFAULT_SCALE`.

    The kind is everything before the first colon; a last ``:NUMBER`` is the scale (so a file name may hold
    colons)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ControlError(f"{option} {spec!r}: write KIND:FILE[:SCALE], e.g. pose:pose.png:0.7")
    kind, rest = spec.split(":", 1)
    kind = check_kind(kind, f"{option} kind")
    scale = DEFAULT_SCALE
    head, _, tail = rest.rpartition(":")
    if head and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", tail.strip()):
        rest, scale = head, check_scale(tail.strip(), f"{option} scale")
    if not rest.strip():
        raise ControlError(f"{option} {spec!r}: the file is missing (KIND:FILE[:SCALE])")
    return kind, rest, scale


def load_control(source, kind: str = "pose", scale: float = DEFAULT_SCALE, start: float = 0.0, end: float = 1.0,
                 name: str | None = None) -> ControlImage:
    """A :class:`ControlImage` from a path, bytes or PIL image (read with the project's one image loader)."""
    kind = check_kind(kind)
    image = source if isinstance(source, Image.Image) else load_image(source, name=name or f"the {kind} control image")
    return ControlImage(image.convert("RGB"), kind, scale, start, end)
