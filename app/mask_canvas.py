"""The routing-mask canvas: one named, colour-coded layer per character slot in ``gr.ImageEditor``.

Values are the editor's ``{"background", "layers", "composite"}`` dicts with PIL images. Layer ``i`` is the mask of
character slot ``i``: whatever is painted on it (its alpha) is where that character may appear. The canvas has the
output's aspect ratio at a preview size; masks are resized to the latent grid by the engine, so only the shape
matters.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw

from core.io.images import decode, open_image
from core.limits import MAX_SIDE
from core.conditioning.masks import MaskError, RoutingMask

from .context import MAX_STUDIO_CHARACTERS

COLOURS = [(220, 50, 47), (38, 139, 210), (133, 153, 0), (203, 75, 22)]
COLOUR_NAMES = ["red", "blue", "green", "orange"]
LAYER_NAMES = [f"Character {i + 1} ({COLOUR_NAMES[i]})" for i in range(MAX_STUDIO_CHARACTERS)]
PREVIEW_SIDE = 512
PAINTED = 0.1  # alpha above which a pixel counts as painted: brush edges are soft, the intent is not

LAYOUTS = {
    "Whole image": lambda n: ["whole"] * n,
    "Left / right": lambda n: ["left", "right"] if n == 2 else [f"grid:1x{n}:{i + 1}" for i in range(n)],
    "Side by side": lambda n: [f"grid:1x{n}:{i + 1}" for i in range(n)],
    "Thirds": lambda n: ["left-third", "center-third", "right-third", "whole"][:n] if n <= 3 else
    [f"grid:1x{n}:{i + 1}" for i in range(n)],
    "Top / bottom": lambda n: ["top", "bottom"] if n == 2 else [f"grid:{n}x1:{i + 1}" for i in range(n)],
    "Grid 2x2": lambda n: [f"grid:2x2:{i + 1}" for i in range(n)],
}


def preview_size(width: int, height: int) -> tuple[int, int]:
    """The canvas size for an output of ``width`` x ``height``: same aspect ratio, longer side ``PREVIEW_SIDE``."""
    scale = PREVIEW_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _layer(size: tuple[int, int], mask: np.ndarray | None, index: int) -> Image.Image:
    layer = Image.new("RGBA", size, COLOURS[index] + (0,))
    if mask is not None:
        alpha = Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8), "L")
        layer.putalpha(alpha.resize(size, Image.Resampling.BILINEAR))
    return layer


def _editor_value(size: tuple[int, int], masks: list[np.ndarray | None], image: Image.Image | None = None) -> dict:
    background = (Image.new("RGBA", size, (255, 255, 255, 255)) if image is None
                  else image.convert("RGBA").resize(size, Image.Resampling.LANCZOS))  # an edit's image, as a guide
    if all(m is None for m in masks):
        # No layer images: the browser keeps (or re-creates, blank) its named layers. Layer images sent to the
        # browser replace them with layers all called "Layer 1" (see CANVAS_JS), and on the first render they race
        # with the background and leave a broken set of layers.
        return {"background": background, "layers": [], "composite": background.copy()}
    layers = [_layer(size, masks[i] if i < len(masks) else None, i) for i in range(MAX_STUDIO_CHARACTERS)]
    composite = background.copy()
    for layer in layers:
        # half-transparent in the composite so overlapping regions stay visible
        faded = layer.copy()
        faded.putalpha(layer.getchannel("A").point(lambda a: a // 2))
        composite = Image.alpha_composite(composite, faded)
    return {"background": background, "layers": layers, "composite": composite}


def _mask_array(mask: RoutingMask, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if mask.image is not None:
        image = Image.fromarray(np.asarray(mask.image, dtype=np.float32), mode="F").resize(size,
                                                                                     Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32)
    x0, y0, x1, y1 = mask.box
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).rectangle([round(x0 * w), round(y0 * h), round(x1 * w) - 1, round(y1 * h) - 1], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def blank_canvas(width: int, height: int) -> dict:
    """An empty canvas for an output of ``width`` x ``height`` (no masks: whole image / automatic layout)."""
    return _editor_value(preview_size(width, height), [])


def layout_canvas(layout: str, count: int, width: int, height: int) -> dict:
    """A canvas with a one-click layout painted on the first ``count`` layers."""
    if layout not in LAYOUTS:
        raise MaskError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    count = max(1, min(count, MAX_STUDIO_CHARACTERS))
    size = preview_size(width, height)
    specs = LAYOUTS[layout](count)
    return _editor_value(size, [_mask_array(RoutingMask.from_spec(spec), size) for spec in specs])


def canvas_from_masks(masks: Iterable[RoutingMask | None], width: int, height: int) -> dict:
    """A canvas showing the given masks (as recalled from metadata), one per slot.

    ``masks`` is read one at a time, so a generator holds only one full-size mask in memory at once.
    """
    size = preview_size(width, height)
    return _editor_value(size, [None if m is None else _mask_array(m, size) for m in masks])


def _layers(value) -> list[Image.Image | None]:
    if not value or not isinstance(value, dict):
        return []
    layers = value.get("layers") or []
    if not isinstance(layers, list) or len(layers) > MAX_STUDIO_CHARACTERS:
        count = len(layers) if isinstance(layers, list) else type(layers).__name__
        raise MaskError(f"the mask canvas has {count} layers: it holds one per character, at most "
                        f"{MAX_STUDIO_CHARACTERS}")
    return [layer if isinstance(layer, Image.Image) or not layer else
            decode(open_image(layer, f"mask layer {i + 1}"), f"mask layer {i + 1}", transpose=False)
            for i, layer in enumerate(layers)]


def layer_masks(value) -> list[np.ndarray | None]:
    """Per layer: a binary float mask (H, W) of what is painted on it, or None for an empty layer."""
    found = []
    for layer in _layers(value):
        if layer is None:
            found.append(None)
            continue
        alpha = layer.getchannel("A") if layer.mode == "RGBA" else layer.convert("RGBA").getchannel("A")
        if max(alpha.size) > MAX_SIDE:  # no output needs more: keep the float array bounded
            scale = MAX_SIDE / max(alpha.size)
            alpha = alpha.resize((max(1, round(alpha.width * scale)), max(1, round(alpha.height * scale))),
                                 Image.Resampling.BOX)
        painted = (np.asarray(alpha, dtype=np.float32) / 255.0 > PAINTED).astype(np.float32)
        found.append(painted if painted.any() else None)
    return found


def resize_canvas(value, width: int, height: int) -> dict:
    """The canvas re-made for a new output size, each layer's painting stretched to the new aspect ratio."""
    masks = layer_masks(value)
    size = preview_size(width, height)
    resized = []
    for mask in masks:
        if mask is None:
            resized.append(None)
            continue
        image = Image.fromarray(mask.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
        resized.append(np.asarray(image, dtype=np.float32))
    return _editor_value(size, resized)


MATCH = 0.995  # share of pixels a layer must agree on with the spec that drew it to count as untouched


def layout_specs(layout: str, count: int) -> list[str | None]:
    """The mask specs (layout names) a one-click layout draws on the first ``count`` layers, one per slot."""
    if layout not in LAYOUTS:
        raise MaskError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    specs = LAYOUTS[layout](max(1, min(count, MAX_STUDIO_CHARACTERS)))
    return specs + [None] * (MAX_STUDIO_CHARACTERS - len(specs))


def _as_drawn(spec, painted: np.ndarray) -> RoutingMask | None:
    """The mask ``spec`` (a RoutingMask JSON) when the painted layer is still what ``spec`` drew, else None."""
    try:
        mask = RoutingMask.from_json(spec)
    except MaskError:
        return None
    if mask is None:
        return None
    h, w = painted.shape
    drawn = (_mask_array(mask, (w, h)) > PAINTED).astype(np.float32)
    return mask if float((drawn == painted).mean()) >= MATCH else None


def slot_masks(value, used_slots: list[int], labels: dict[int, str],
               specs: list | None = None) -> tuple[dict[int, RoutingMask | None], list[str]]:
    """Masks for the character slots in use, from the canvas.

    ``specs`` (per slot, optional) are the exact masks that drew each layer (a layout's names, a recalled PNG's
    masks): a layer still as drawn gives its spec itself, so a layout stays a name and a soft mask keeps its values;
    a layer painted over gives what is painted.

    Nothing painted anywhere: no masks (one character covers the image; several are laid out automatically).
    Otherwise every slot in use needs paint on its layer; paint on a layer whose slot is empty is ignored (noted).

    Returns ``({slot: mask or None}, notes)``; raises :class:`MaskError` for a character with an empty mask.
    """
    masks = layer_masks(value)
    masks += [None] * (MAX_STUDIO_CHARACTERS - len(masks))
    notes = []
    if not any(masks[i] is not None for i in used_slots):
        stray = [LAYER_NAMES[i] for i, m in enumerate(masks) if m is not None]
        if stray:
            notes.append(f"paint on {', '.join(stray)} ignored: no character in that slot")
        return {i: None for i in used_slots}, notes
    result = {}
    for i in used_slots:
        if masks[i] is None:
            raise MaskError(f"{labels[i]} has an empty mask: paint on layer '{LAYER_NAMES[i]}', pick a layout, "
                            "or clear the canvas to place characters automatically")
        spec = specs[i] if specs and i < len(specs) else None
        result[i] = (spec is not None and _as_drawn(spec, masks[i])) or RoutingMask.from_spec(masks[i])
    for i, m in enumerate(masks):
        if m is not None and i not in used_slots:
            notes.append(f"paint on {LAYER_NAMES[i]} ignored: no character in that slot")
    return result, notes


def permute_canvas(value, order: list[int | None], width: int, height: int) -> dict:
    """The canvas with its layers re-ordered: new layer ``j`` is old layer ``order[j]`` (None: empty)."""
    masks = layer_masks(value)
    masks += [None] * (MAX_STUDIO_CHARACTERS - len(masks))
    size = preview_size(width, height)
    moved = []
    for source in order:
        mask = masks[source] if source is not None else None
        if mask is not None and mask.shape != (size[1], size[0]):
            mask = np.asarray(Image.fromarray(mask, mode="F").resize(size, Image.Resampling.BILINEAR))
        moved.append(mask)
    return _editor_value(size, moved)


# ---------------------------------------------------------------------- the edit canvas
EDIT_LAYER = "Region to redo"
EDIT_BRUSH = (255, 255, 255)


def edit_canvas(image, region: RoutingMask | None = None) -> dict:
    """The edit canvas: ``image`` (a path, bytes or PIL image) as its background and, when given, ``region``
    painted on its one layer (as Recall restores an inpainting edit)."""
    from core.conditioning.edit import load_source, region_pixels

    background = load_source(image).convert("RGBA")
    if region is None:
        return {"background": background, "layers": [], "composite": background.copy()}
    painted = region_pixels(region, *background.size)
    layer = Image.new("RGBA", background.size, EDIT_BRUSH + (0,))
    layer.putalpha(Image.fromarray((painted * 255).astype(np.uint8), "L"))
    faded = layer.copy()
    faded.putalpha(layer.getchannel("A").point(lambda a: a // 2))
    return {"background": background, "layers": [layer], "composite": Image.alpha_composite(background, faded)}


def canvas_on_image(value, image: Image.Image, width: int, height: int) -> dict:
    """The routing canvas at the output size with ``image`` (the image being edited) as its background, so the
    characters' masks are painted on the picture; what was painted on each layer is kept."""
    masks = layer_masks(value)
    size = preview_size(width, height)
    resized = [None if m is None else np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR), dtype=np.float32) for m in masks]
    return _editor_value(size, resized, image)


def edit_from_canvas(value) -> tuple[Image.Image | None, RoutingMask | None, list[str]]:
    """``(source, region, notes)`` of the edit canvas: its background as the source (None when there is none),
    what is painted on its layer as the region (None when nothing is: the whole image is edited)."""
    from core.conditioning.edit import load_region, load_source

    if not isinstance(value, dict) or value.get("background") is None:
        return None, None, []
    background = value["background"]
    if not isinstance(background, Image.Image):
        background = decode(open_image(background, "the image to edit"), "the image to edit")
    source = load_source(background, "the image to edit")
    painted = [m for m in layer_masks(value) if m is not None]
    if not painted:
        return source, None, []
    union = np.maximum.reduce(painted) if len(painted) > 1 else painted[0]
    if union.shape != (source.height, source.width):
        layer = Image.fromarray((union * 255).astype(np.uint8), "L")
        region, notes = load_region(layer, source.size, "the painted region")
        return source, region, notes
    return source, RoutingMask.from_spec(union), []


# Gradio's image editor (6.x) names every layer it loads from a value "Layer 1" (and marks it user-made), whatever
# ``gr.LayerOptions(layers=...)`` says; only the layers it makes itself carry the configured names. Run once when the
# page loads, this makes layers loaded from a value take the configured names in order (when no additional layers are
# allowed), and renames any layer loaded before it ran. It patches the editor's layer manager class, found through
# the ``window.editor`` the component sets, and gives up quietly if the editor or its internals are not there.
CANVAS_JS = """
() => {
  const install = () => {
    const manager = window.editor && window.editor.layer_manager;
    if (!manager || typeof manager.create_layer !== "function" || !Array.isArray(manager.layers)) return false;
    const fixed = (m) => m.layer_options && !m.layer_options.allow_additional_layers ? m.layer_options.layers || [] : [];
    const proto = Object.getPrototypeOf(manager);
    if (!proto.studio_named_layers) {
      const create_layer = proto.create_layer;
      proto.create_layer = function (options) {
        const names = fixed(this);
        if (options && options.user_created && this.layers.length < names.length) {
          options = Object.assign({}, options, {layer_name: names[this.layers.length], user_created: false});
        }
        return create_layer.call(this, options);
      };
      proto.studio_named_layers = true;
    }
    const names = fixed(manager);
    let renamed = false;
    manager.layers.forEach((layer, i) => {
      if (i < names.length && layer.name !== names[i]) {
        layer.name = names[i];
        layer.user_created = false;
        renamed = true;
      }
    });
    if (renamed && manager.layer_store) manager.layer_store.update((s) => Object.assign({}, s, {layers: manager.layers}));
    return true;
  };
  if (!install()) {
    const timer = setInterval(() => { if (install()) clearInterval(timer); }, 200);
    setTimeout(() => clearInterval(timer), 120000);
  }
}
"""
