"""A character to put into an image: its reference image, name, strength and region."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from PIL import Image

from core.io.images import image_key, load_image
from core.io.metadata import CharacterRecord, MetadataError, image_from_b64, image_to_b64
from core.limits import (MAX_CHARACTERS, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MAX_SCALE, LimitError, check_number,
                         check_text, short_repr)
from core.conditioning.masks import MaskError, RoutingMask
from core.errors import UserError

# MAX_CHARACTERS: each character adds one attention per layer and step; past 8 regions get too small to hold one
_NAME = re.compile(rf"^[^\[\]\n]{{1,{MAX_NAME_CHARS}}}$")


class CharacterError(UserError, ValueError):
    """A character that cannot be used; the message says why in one line."""


@dataclass
class Character:
    """One character.

    Args:
        image: the reference image (PIL image, path or bytes). Any size; it is stretched to a square internally.
        name: how prompts refer to it as ``[name]``; optional for a single character.
        scale: strength of the character in the image (0 to 2; the released default is 0.9).
        mask: where it may appear: an image, a normalized box ``(x0, y0, x1, y1)``, a layout preset such as
            ``"left"`` (see :mod:`core.conditioning.masks`), or ``None`` for the whole image.
        description: words that replace ``[name]`` for the text encoders (defaults to the name).
    """

    image: Image.Image | str | os.PathLike | bytes
    name: str | None = None
    scale: float = 0.9
    mask: object = None
    description: str | None = None
    key: str = field(init=False, repr=False)

    def __post_init__(self):
        if self.name is not None:
            if not isinstance(self.name, str):
                raise CharacterError(f"a character's name must be text, got {type(self.name).__name__}")
            self.name = self.name.strip()
            if not _NAME.match(self.name):
                raise CharacterError(f"character name {short_repr(self.name)} must be 1-{MAX_NAME_CHARS} characters "
                                     "without brackets or line breaks")
        label = f"character {self.name!r}" if self.name else "character image"
        try:
            check_text(self.description, f"{label}: the description", MAX_DESCRIPTION_CHARS)
        except LimitError as exc:
            raise CharacterError(str(exc)) from None
        try:
            self.scale = check_number(self.scale, f"{label}: scale", 0.0, MAX_SCALE)
        except LimitError as exc:
            raise CharacterError(str(exc)) from None
        source = self.image
        self.image = load_image(source, name=str(source) if isinstance(source, (str, os.PathLike)) else label)
        self.key = image_key(self.image)
        self.mask = RoutingMask.from_spec(self.mask)

    @property
    def words(self) -> str:
        """The text that stands for this character in the prompt."""
        return self.description or self.name or "the character"

    def record(self) -> CharacterRecord:
        """The character as a PNG record stores it: the image itself (base64 PNG), the mask as its JSON."""
        return CharacterRecord(image=image_to_b64(self.image), name=self.name, scale=self.scale,
                               mask=self.mask.to_json() if self.mask is not None else None,
                               description=self.description)

    @classmethod
    def from_record(cls, record: CharacterRecord, label: str = "the character") -> "Character":
        """The character ``record`` stores; :class:`~core.io.metadata.MetadataError` naming ``label`` for an image
        or mask that cannot be read."""
        try:
            mask = RoutingMask.from_json(record.mask, f"{label}'s mask")
        except MaskError as exc:
            raise MetadataError(str(exc)) from None
        return cls(image_from_b64(record.image, f"{label}'s image"), name=record.name, scale=record.scale,
                   mask=mask, description=record.description)


def check_characters(characters: list[Character]) -> None:
    """Raises :class:`CharacterError` for too many characters or duplicate names."""
    if len(characters) > MAX_CHARACTERS:
        raise CharacterError(
            f"{len(characters)} characters given: at most {MAX_CHARACTERS} fit in one image "
            "(each needs a region of its own)"
        )
    seen = {}
    for c in characters:
        if not isinstance(c, Character):
            raise CharacterError(f"characters must be Character objects, got {type(c).__name__}")
        if c.name:
            low = c.name.lower()
            if low in seen:
                raise CharacterError(f"two characters are named {c.name!r}: names must be unique")
            seen[low] = c
