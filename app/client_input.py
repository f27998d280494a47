"""Every value a client sends that could name a file, parsed as its own kind here and nowhere else.

A handler never passes a client's string to something that opens files. It calls one of these:

* :func:`region`: a layout name or ``box:x0,y0,x1,y1`` (a :class:`RoutingMask`), never a file;
* :func:`loras`: LoRA rows, each a bare name in ``loras/``, a path the studio's path policy allows, or a hub id
  (:class:`core.io.hub_ids.HubId`), hub files fetched here, before the GPU slot, if this client may download;
* :func:`path` (:func:`studio_file` for a file component's value): any other file a client names (a PNG to
  Recall or to edit, an image in History, a story folder), through the path policy, with the same message whether
  the file exists or not.

The Generate form's settings are parsed here too (:func:`request_fields`): numbers as numbers, choices as text. Their
bounds are not: :class:`core.request.GenerationRequest` checks them when it is built, as for every other surface.

Uploaded files reach the handlers as paths in Gradio's upload cache, a root of the same policy.
"""

from __future__ import annotations

from pathlib import Path

from core.conditioning.layouts import NAMED_LAYOUTS, MaskError
from core.conditioning.masks import RoutingMask
from core.io.path_policy import PathNotAllowedError
from core.limits import MAX_SPEC_CHARS, short_repr
from core.loading.loras import StyleLora, parse_rows

from .errors import StudioInputError

WHOLE = ("", "whole panel", "whole image")


def region(value, what: str = "region") -> RoutingMask | None:
    """``None`` for the whole image, else the layout name or box in ``value`` (any other text is refused
    without looking at the disk)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in WHOLE):
        return None
    if not isinstance(value, str) or len(value) > MAX_SPEC_CHARS:
        raise StudioInputError(f"{what} must be a layout name or box:x0,y0,x1,y1 (at most {MAX_SPEC_CHARS} "
                               "characters)")
    try:
        return RoutingMask.from_spec(value.strip())
    except MaskError:
        raise StudioInputError(f"{what} {short_repr(value.strip())} must be one of {', '.join(NAMED_LAYOUTS)}, "
                               "grid:RxC:N or box:x0,y0,x1,y1 (fractions 0-1)") from None


# the Generate form's settings in the page's order; those that are request fields (all but the form's own
# randomize-seed box), and those of them that are numbers
SETTING_FIELDS = ("prompt", "negative_prompt", "true_cfg_scale", "steps", "guidance", "width", "height", "seed",
                  "randomize_seed", "images", "regional_text")
REQUEST_FIELDS = tuple(name for name in SETTING_FIELDS if name != "randomize_seed")
NUMBER_FIELDS = ("true_cfg_scale", "steps", "guidance", "width", "height", "seed", "images")


def number(value):
    """A number field's value as a number: numeric text parsed (``" 28 "`` is 28, ``"3.5"`` is 3.5); anything else
    as it is, for :mod:`core.limits` to refuse by the field's name."""
    if not isinstance(value, str) or len(value) > 40:
        return value
    for kind in (int, float):
        try:
            return kind(value.strip())
        except ValueError:
            pass
    return value


def regional_text(value) -> str:
    """The Regional text choice as text (the request parses it: auto, on or off)."""
    if not isinstance(value, str):
        raise StudioInputError(f"regional text must be auto, on or off, got {short_repr(value)}")
    return value


def request_fields(form: dict) -> dict:
    """The Generate form's settings that are request fields (:data:`REQUEST_FIELDS` of ``form``) as
    :class:`core.request.GenerationRequest` keyword arguments; an empty seed is ``None`` (pick one)."""
    fields = {name: form[name] for name in REQUEST_FIELDS}
    fields.update({name: number(fields[name]) for name in NUMBER_FIELDS})
    fields["regional_text"] = regional_text(fields["regional_text"])
    if fields["seed"] == "":
        fields["seed"] = None
    return fields


def loras(rows, ctx, request=None) -> list[StyleLora]:
    """The LoRA rows ``(source, weight, trigger)`` of ``request``'s form, with the studio's folders and the
    client's right to download (:meth:`app.context.Access.may_download`)."""
    return parse_rows(rows, ctx.paths, downloads=ctx.access.may_download(request))


def path(ctx, value, what: str = "file") -> Path:
    """``value`` resolved inside the studio's folders (:class:`core.io.path_policy.PathNotAllowedError` otherwise)."""
    if not isinstance(value, str) or not value:
        raise StudioInputError(f"no {what} given")
    return ctx.paths.resolve(value, what=what)


def studio_file(ctx, value, what: str) -> Path:
    """A file a client names (a gallery or history image, a dropped PNG: Gradio's value or its ``.name``),
    resolved by :func:`path` inside the studio's folders; an image the History lists (the studio made it, maybe in
    an earlier output folder, and History shows it to every client) is taken as it is."""
    name = getattr(value, "name", value)
    try:
        return path(ctx, name, what)
    except PathNotAllowedError:
        if ctx.history.lists(name):  # read only for a file outside the folders, not on every Recall
            return Path(name)
        raise


def flag(value, name: str) -> bool:
    """A checkbox's value: ``True`` or ``False`` only (a client's ``"false"`` is not taken as true)."""
    if not isinstance(value, bool):
        raise StudioInputError(f"{name} must be true or false, got {short_repr(value)}")
    return value
