"""Generation settings carried inside PNG files, so any image can be reproduced or recalled.

Each PNG gets two text chunks: ``parameters`` (A1111-style, readable by other tools) and ``instantcharacter``
(JSON with every setting, character images and masks included, so Recall needs nothing else).

An edit (image-to-image or inpainting) records its source by the digest of its pixels with the source saved beside
the output as ``source-<digest[:16]>.png`` (:func:`save_png` writes it; :func:`read_edit_source` reads it back and
checks it), its strength and its region (a mask as ``RoutingMask.to_json`` gives it). Control images are kept the
same way, as ``control-<digest[:16]>.png`` beside the output (:meth:`core.conditioning.control.ControlImage.record`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin

from core.io.images import (PNG_SIGNATURE, TEXT_CHUNKS, ImageInputError, decode, open_image, png_chunks,
                            rgb_digest, to_rgb)
from core.conditioning.control import MAX_CONTROLS, ControlError, check_record
from core.conditioning.layouts import MaskError, parse_box, parse_layout
from core.conditioning.regional_text import RegionalText, RegionalTextError
from core.limits import (MAX_LORA_WEIGHT, MAX_CHARACTERS, MAX_DESCRIPTION_CHARS, MAX_GUIDANCE, MAX_LORAS, MAX_METADATA_BYTES,
                     MAX_METADATA_DEPTH, MAX_NAME_CHARS, MAX_PROMPT_CHARS, MAX_SCALE, MAX_SEQUENCE_LENGTH,
                     MAX_SPEC_CHARS, MAX_STEPS,
                     MAX_TRUE_CFG, LimitError, check_int, check_number, check_seed, check_size, check_text,
                     short_repr)
from core.io.paths import atomic_path, remove_stale_temporaries
from core.errors import UserError

JSON_KEY = "instantcharacter"
FORMAT_VERSION = 1
MAX_STRUCTURE_CHARS = 1 << 20  # the JSON outside its strings; real records have a few hundred characters
MAX_SOURCE_CHARS = 1000  # a model or LoRA source: a path or hub id
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class MetadataError(UserError, ValueError):
    """A PNG without usable InstantCharacter Studio metadata."""


def image_to_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _b64_bytes(data, name: str) -> bytes:
    if not isinstance(data, str):
        raise MetadataError(f"{name} must be a base64 PNG, got {type(data).__name__}")
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataError(f"{name} is larger than {MAX_METADATA_BYTES // 2**20} MB")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MetadataError(f"{name} is not a base64 PNG") from None


def png_from_b64(data: str, name: str = "the character image") -> bytes:
    """The image file inside ``data`` (base64), checked from its header (a readable image within the pixel limit)
    but not decoded."""
    raw = _b64_bytes(data, name)
    try:
        image = open_image(raw, name)
    except ImageInputError as exc:
        raise MetadataError(str(exc)) from None
    if image.format != "PNG":
        raise MetadataError(f"{name} is a {image.format} file: the studio stores PNGs")
    return raw


def image_from_b64(data: str, name: str = "the character image") -> Image.Image:
    """The RGB image inside ``data`` (base64 PNG), checked against the pixel limit before it is decoded."""
    raw = _b64_bytes(data, name)
    try:
        return to_rgb(decode(open_image(raw, name), name, transpose=False))
    except ImageInputError as exc:
        raise MetadataError(str(exc)) from None


@dataclass
class CharacterRecord:
    """A character as stored in metadata: the image itself (base64 PNG), name, scale, mask (see
    ``RoutingMask.to_json``). :meth:`core.conditioning.character.Character.record` makes one and
    ``Character.from_record`` reads one back."""

    image: str
    name: str | None = None
    scale: float = 0.9
    mask: str | None = None
    description: str | None = None

    @classmethod
    def from_dict(cls, data, label: str) -> "CharacterRecord":
        """A record from its JSON object, every field checked (unknown fields are ignored)."""
        if not isinstance(data, dict):
            raise LimitError(f"{label} must be an object, got {type(data).__name__}")
        if not isinstance(data.get("image"), str):
            raise LimitError(f"{label} has no image")
        return cls(image=data["image"], name=check_text(data.get("name"), f"{label}'s name", MAX_NAME_CHARS),
                   scale=check_number(data.get("scale", 0.9), f"{label}'s scale", 0.0, MAX_SCALE),
                   mask=_check_mask(data.get("mask"), f"{label}'s mask"),
                   description=check_text(data.get("description"), f"{label}'s description", MAX_DESCRIPTION_CHARS))


@dataclass
class GenerationRecord:
    """Every setting of one generated image."""

    prompt: str
    seed: int
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 28
    guidance_scale: float = 3.5
    negative_prompt: str | None = None
    true_cfg_scale: float = 1.0
    max_sequence_length: int = 512
    characters: list[CharacterRecord] = field(default_factory=list)
    loras: list[dict] = field(default_factory=list)  # [{"source": ..., "weight": ..., "trigger": ...}]
    models: dict = field(default_factory=dict)  # base / siglip / dinov2 / adapter / text_adapter sources
    dtype: str = "bfloat16"
    preset: str | None = None
    version: int = FORMAT_VERSION
    edit: dict | None = None  # {"source_sha256", "source_file", "strength", "region"} for an edit, else None
    control: list[dict] | None = None  # [{"kind", "scale", "start", "end", "sha256", "file"}], else None
    regional_text: dict | None = None  # core.conditioning.regional_text.RegionalText's fields; None: not recorded

    def parameters_text(self) -> str:
        """The A1111-style ``parameters`` text."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        fields = [
            f"Steps: {self.num_inference_steps}", "Sampler: FlowMatch Euler", f"CFG scale: {self.true_cfg_scale:g}",
            f"Distilled guidance: {self.guidance_scale:g}", f"Seed: {self.seed}", f"Size: {self.width}x{self.height}",
            f"Model: {self.models.get('base', 'FLUX.1-dev')}",
        ]
        for c in self.characters:
            fields.append(f"Character {c.name or ''}: scale {c.scale:g}, mask {(c.mask or 'whole')[:40]}".replace("  ", " "))
        for lora in self.loras:
            fields.append(f"LoRA: {lora.get('source')}:{lora.get('weight', 1.0):g}")
        if self.regional_text and len(self.characters) > 1:
            fields.append(f"Regional text: {self.regional_text.get('mode', 'auto')}")
        if self.edit:
            region = "inpaint " + str(self.edit.get("region"))[:40] if self.edit.get("region") else "whole image"
            fields.append(f"Edit: {self.edit['source_file']} at strength {self.edit['strength']:g}, {region}")
        for c in self.control or []:
            fields.append(f"Control {c['kind']}: {c['file']} at scale {c['scale']:g}, steps {c['start']:g}-{c['end']:g}")
        lines.append(", ".join(fields))
        return "\n".join(lines)

    def to_json(self) -> str:
        data = asdict(self)
        if data["edit"] is None:  # not an edit: the same JSON as before edits existed
            del data["edit"]
        if data["control"] is None:  # no control image: the same JSON as before control existed
            del data["control"]
        if data["regional_text"] is None:
            del data["regional_text"]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "GenerationRecord":
        """The record in ``text``, every field checked against :mod:`core.limits`; :class:`MetadataError` (one line)
        for anything a generation could not use. Size and nesting are checked before the JSON is parsed."""
        data = _parse_json(text)
        try:
            return cls._from_dict(data)
        except LimitError as exc:
            raise MetadataError(f"the image's settings are not usable: {exc}") from None

    @classmethod
    def _from_dict(cls, data) -> "GenerationRecord":
        if not isinstance(data, dict):
            raise LimitError(f"they must be a JSON object, got {type(data).__name__}")
        version = check_int(data.get("version", FORMAT_VERSION), "version", 1, 10**6)
        if version > FORMAT_VERSION:
            raise LimitError(f"they are format {version}, from a newer InstantCharacter Studio (this one reads "
                             f"{FORMAT_VERSION}): update it to recall them")
        if "prompt" not in data or "seed" not in data:
            raise LimitError("the prompt or the seed is missing")
        characters = _check_list(data.get("characters", []), "characters", MAX_CHARACTERS)
        loras = _check_list(data.get("loras", []), "loras", MAX_LORAS)
        width, height = check_size(data.get("width", 1024), data.get("height", 1024))
        return cls(
            prompt=check_text(data["prompt"], "prompt", MAX_PROMPT_CHARS, optional=False),
            seed=check_seed(data["seed"]),
            width=width, height=height,
            num_inference_steps=check_int(data.get("num_inference_steps", 28), "num_inference_steps", 1, MAX_STEPS),
            guidance_scale=check_number(data.get("guidance_scale", 3.5), "guidance_scale", 0.0, MAX_GUIDANCE),
            negative_prompt=check_text(data.get("negative_prompt"), "negative_prompt", MAX_PROMPT_CHARS),
            true_cfg_scale=check_number(data.get("true_cfg_scale", 1.0), "true_cfg_scale", 1.0, MAX_TRUE_CFG),
            max_sequence_length=check_int(data.get("max_sequence_length", 512), "max_sequence_length", 1,
                                          MAX_SEQUENCE_LENGTH),
            characters=[CharacterRecord.from_dict(c, f"character {i + 1}") for i, c in enumerate(characters)],
            loras=[_check_lora(d, f"LoRA {j + 1}") for j, d in enumerate(loras)],
            models=_check_models(data.get("models", {})),
            dtype=check_text(data.get("dtype", "bfloat16"), "dtype", 32, optional=False),
            preset=check_text(data.get("preset"), "preset", 32),
            version=version,
            edit=_check_edit(data.get("edit")),
            control=_check_controls(data.get("control")),
            regional_text=_check_regional_text(data.get("regional_text")),
        )

    def pnginfo(self) -> PngImagePlugin.PngInfo:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", self.parameters_text())
        info.add_text(JSON_KEY, self.to_json(), zip=True)
        return info


def _check_regional_text(value) -> dict | None:
    """A recorded regional-text setting as its fields, checked; ``None`` stays ``None``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LimitError(f"regional_text must be an object, got {type(value).__name__}")
    try:
        return RegionalText.parse(value).to_json()
    except (RegionalTextError, TypeError) as exc:
        raise LimitError(str(exc)) from None


def save_png(image: Image.Image, path: str | os.PathLike, record: GenerationRecord,
             source: Image.Image | None = None, controls: list | None = None) -> Path:
    """Saves ``image`` as a PNG carrying ``record``, atomically; for an edit, ``source`` (the edit's source image)
    is saved beside it under the name the record gives, unless that file is already there with the same pixels;
    so are the ``controls`` (:class:`~core.conditioning.control.ControlImage`) the record names."""
    path = Path(path)
    if record.edit and source is not None:
        save_edit_source(source, path.parent, record.edit)
    save_controls_beside(controls or [], path.parent)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=record.pnginfo())
    remove_stale_temporaries(path.parent)  # what a killed save left here (only files older than any live write)
    return path


def save_edit_source(source: Image.Image, folder: str | os.PathLike, edit: dict) -> Path:
    """Writes an edit's source image into ``folder`` as ``edit["source_file"]`` (kept when already there)."""
    return _save_beside(source, folder, edit["source_file"], edit["source_sha256"])


def save_controls_beside(controls: list, folder: str | os.PathLike) -> None:
    """Writes each :class:`~core.conditioning.control.ControlImage` into ``folder`` under its ``file_name`` (kept
    when already there), where a PNG's record names it."""
    for control in controls:
        _save_beside(control.image, folder, control.file_name, control.digest)


def _save_beside(image: Image.Image, folder: str | os.PathLike, name: str, digest: str) -> Path:
    """Writes ``image`` as ``folder/name`` (kept when a file of the same pixels is already there)."""
    target = Path(folder) / name
    try:
        if target.is_file() and rgb_digest(to_rgb(decode(open_image(target), name))) == digest:
            return target
    except ImageInputError:
        pass
    with atomic_path(target) as tmp:
        image.convert("RGB").save(tmp, format="PNG")
    return target


def read_edit_source(edit: dict, folder: str | os.PathLike | None) -> Image.Image:
    """The source image of an edit, read from ``folder`` (where its PNG is) and checked against its digest."""
    name = edit["source_file"]
    return _read_beside(name, edit["source_sha256"], folder, f"this image is an edit of {name}",
                        "put the source back to recall the edit",
                        "is not the source this image was edited from")


def read_control_image(control: dict, folder: str | os.PathLike | None) -> Image.Image:
    """The image of a record's control entry, read from ``folder`` (where its PNG is) and checked against its
    digest (:meth:`core.conditioning.control.ControlImage.from_record` makes the control of the two)."""
    name = control["file"]
    return _read_beside(name, control["sha256"], folder, f"this image used the control image {name}",
                        "put it back to recall the image", "is not the control image this image was made with")


def _read_beside(name: str, digest: str, folder, what: str, fix: str, mismatch: str) -> Image.Image:
    """An image saved beside a PNG (an edit's source, a control image), read from ``folder`` and checked against
    the pixel digest its record gives; ``what``/``fix``/``mismatch`` word the messages."""
    if folder is None:
        raise MetadataError(f"{what}: recall it from its file, with {name} beside it")
    path = Path(folder) / name
    if not path.is_file():
        raise MetadataError(f"{what}, which is not beside it in {folder}: {fix}")
    try:
        image = to_rgb(decode(open_image(path, name), name))
    except ImageInputError as exc:
        raise MetadataError(str(exc)) from None
    if rgb_digest(image) != digest:
        raise MetadataError(f"{path} {mismatch} (its pixels differ)")
    return image


def read_record(source) -> GenerationRecord:
    """The :class:`GenerationRecord` of a PNG made by the studio (path, bytes, file object or opened image).

    Only the settings chunk is read (the pixels are not decoded), inflated to at most MAX_METADATA_BYTES.
    """
    if isinstance(source, Image.Image):
        try:
            text = dict(getattr(source, "text", None) or source.info).get(JSON_KEY)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise MetadataError("the image cannot be read") from None
    elif isinstance(source, (bytes, bytearray)):
        text = _settings_text(io.BytesIO(source))
    elif hasattr(source, "read"):
        text = _settings_text(source)
    else:
        try:
            with open(source, "rb") as handle:
                text = _settings_text(handle)
        except FileNotFoundError:
            raise MetadataError(f"{source}: file not found") from None
        except OSError as exc:
            raise MetadataError(f"{source} cannot be read: {exc.strerror or exc}") from None
    if text is None:
        raise MetadataError("this image carries no InstantCharacter Studio settings (was it made by the studio?)")
    return GenerationRecord.from_json(text)


def _settings_text(handle) -> str | None:
    """The text of the ``instantcharacter`` chunk of a PNG file object (None when it has none)."""
    if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        handle.seek(0)
        try:
            open_image(handle, "the file")
        except ImageInputError:
            raise MetadataError("not an image file") from None
        return None  # an image, but not a PNG: the studio writes only PNGs
    key = JSON_KEY.encode() + b"\0"
    for kind, length in png_chunks(handle):
        if kind not in TEXT_CHUNKS or length < len(key) or handle.read(len(key)) != key:
            continue
        if length - len(key) > MAX_METADATA_BYTES:
            raise MetadataError(f"the image's settings are larger than {MAX_METADATA_BYTES // 2**20} MB")
        body = handle.read(length - len(key))
        return _chunk_text(kind, body)
    return None


def _chunk_text(kind: bytes, body: bytes) -> str:
    """The text of a tEXt, zTXt or iTXt chunk's body (after its keyword), inflated with a bound."""
    if kind == b"tEXt":
        return body.decode("latin-1")
    if kind == b"zTXt":
        return _inflate(body[1:]).decode("latin-1")
    compressed, rest = body[:1] == b"\1", body[2:]  # iTXt: flag, method, language, translated keyword, text
    parts = rest.split(b"\0", 2)
    if len(parts) != 3:
        raise MetadataError("the image's settings chunk is malformed")
    data = _inflate(parts[2]) if compressed else parts[2]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError("the image's settings are not UTF-8 text") from None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_METADATA_BYTES + 1)
    except zlib.error:
        raise MetadataError("the image's settings are corrupt (bad compressed data)") from None
    if len(text) > MAX_METADATA_BYTES or inflater.unconsumed_tail:
        raise MetadataError(f"the image's settings inflate to more than {MAX_METADATA_BYTES // 2**20} MB: refused")
    return text


# ---------------------------------------------------------------------- checking the JSON
def _parse_json(text) -> object:
    """``json.loads(text)`` once its size, the size of its structure (all but the strings) and its nesting are
    known to be within bounds, so parsing can neither recurse deeply nor build huge lists."""
    if not isinstance(text, str):
        raise MetadataError(f"the image's settings must be text, got {type(text).__name__}")
    if len(text) > MAX_METADATA_BYTES:
        raise MetadataError(f"the image's settings are larger than {MAX_METADATA_BYTES // 2**20} MB")
    structure = _STRING.sub('""', text)
    if len(structure) > MAX_STRUCTURE_CHARS:
        raise MetadataError(f"the image's settings hold too many values ({len(structure):,} characters outside "
                            f"strings; at most {MAX_STRUCTURE_CHARS:,})")
    depth = 0
    for bracket in _NOT_BRACKET.sub("", structure):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_METADATA_DEPTH:
            raise MetadataError(f"the image's settings nest deeper than {MAX_METADATA_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"the image's settings are not valid JSON ({exc})") from None
    except ValueError:  # an integer with thousands of digits
        raise MetadataError("the image's settings hold a number too long to read") from None


def _check_list(value, name: str, limit: int) -> list:
    if not isinstance(value, list):
        raise LimitError(f"{name} must be a list, got {type(value).__name__}")
    if len(value) > limit:
        raise LimitError(f"{len(value):,} {name} given: at most {limit}")
    return value


def _check_mask(value, name: str):
    """A mask as stored (see ``RoutingMask.to_json``): a layout name or box in full, a PNG's size (its pixels are
    checked when it is decoded, by ``RoutingMask.from_json``)."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("png:"):
        if len(value) > MAX_METADATA_BYTES:
            raise LimitError(f"{name} is larger than {MAX_METADATA_BYTES // 2**20} MB")
        return value
    is_box = isinstance(value, list) and len(value) == 4 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not is_box and not (isinstance(value, str) and len(value) <= MAX_SPEC_CHARS):
        raise LimitError(f"{name} must be a layout name, a box of four numbers or a PNG, got {short_repr(value)}")
    try:
        parse_box(value) if is_box else parse_layout(value)
    except MaskError as exc:
        raise LimitError(f"{name}: {exc}") from None
    return value


def _check_lora(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise LimitError(f"{name} must be an object, got {type(value).__name__}")
    return {"source": check_text(value.get("source", ""), f"{name}'s source", MAX_SOURCE_CHARS, optional=False),
            "weight": check_number(value.get("weight", 1.0), f"{name}'s weight", -MAX_LORA_WEIGHT, MAX_LORA_WEIGHT),
            "trigger": check_text(value.get("trigger") or "", f"{name}'s trigger words", MAX_PROMPT_CHARS)}


_SOURCE_FILE = re.compile(r"^source-[0-9a-f]{16}\.png$")


def _check_edit(value) -> dict | None:
    """An edit as stored: the source's digest and file name (a plain name beside the PNG), strength and region."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LimitError(f"edit must be an object, got {type(value).__name__}")
    digest = value.get("source_sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise LimitError("edit: source_sha256 must be a sha256 hex digest")
    name = value.get("source_file")
    if not isinstance(name, str) or not _SOURCE_FILE.match(name) or name != f"source-{digest[:16]}.png":
        raise LimitError(f"edit: source_file must be source-<digest>.png beside the image, got {short_repr(name)}")
    return {"source_sha256": digest, "source_file": name,
            "strength": check_number(value.get("strength", 0.6), "edit strength", 0.0, 1.0),
            "region": _check_mask(value.get("region"), "the edit's region")}


def _check_controls(value) -> list[dict] | None:
    """Control entries as stored (:func:`core.conditioning.control.check_record`), at most ``MAX_CONTROLS``."""
    if value is None:
        return None
    entries = _check_list(value, "control images", MAX_CONTROLS)
    try:
        return [check_record(c, f"control {i + 1}") for i, c in enumerate(entries)] or None
    except ControlError as exc:
        raise LimitError(str(exc)) from None


def _check_models(value) -> dict:
    if not isinstance(value, dict):
        raise LimitError(f"models must be an object, got {type(value).__name__}")
    if len(value) > 16:
        raise LimitError(f"models has {len(value):,} entries: at most 16")
    return {check_text(k, "a models key", 64): _check_model_source(v, f"models[{k!r}]") for k, v in value.items()}


def _check_model_source(value, name: str):
    """A model source as recorded: text (a hub id or a folder), or a single file by name and digest
    (``{"file": ..., "digest": ...}``, the form :meth:`core.engine.Engine.provenance` writes)."""
    if not isinstance(value, dict):
        return check_text(value, name, MAX_SOURCE_CHARS)
    if set(value) != {"file", "digest"}:
        raise LimitError(f"{name} must be text or an object with 'file' and 'digest', got keys {sorted(value)[:4]}")
    return {"file": check_text(value["file"], f"{name}'s file", 255, optional=False),
            "digest": check_text(value["digest"], f"{name}'s digest", 128, optional=False)}
