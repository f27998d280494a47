"""Control images made from what users have: a photo or drawing turned into edges, depth or a pose skeleton.

- ``canny``: Canny edges (Sobel gradients, thinning to local maxima, two thresholds joined by hysteresis) in numpy
  and Pillow (no OpenCV here); white edges on black, as the Union ControlNets were trained on.
- ``soft-edge``: the blurred image's gradient magnitude, normalised (a soft edge map; not the HED network).
- ``gray``: the image in grayscale.
- ``depth``: transformers' ``DepthAnythingForDepthEstimation`` (default Depth Anything V2 Small, Apache-2.0),
  near = white.
- ``pose``: transformers' ``VitPoseForPoseEstimation`` (default ViTPose-B simple, Apache-2.0) on the people an
  ``RTDetrForObjectDetection`` person detector finds (RT-DETR R50, Apache-2.0; the pairing of transformers' ViTPose
  docs), drawn as an OpenPose skeleton: 18 joints (COCO's 17 plus the neck between the shoulders), each limb and
  joint in OpenPose's colours on black.

The models load on first use (:class:`Preprocessors` holds them); ``--models tiny`` has tiny random ones of the
same classes (:func:`core.loading.tiny.build_tiny_preprocessors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.conditioning.control import DEFAULT_SCALE, ControlImage, check_kind
from core.errors import UserError

DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
POSE_MODEL = "usyd-community/vitpose-base-simple"
PERSON_MODEL = "PekingU/rtdetr_r50vd_coco_o365"
PERSON_LABEL = 0  # COCO's "person"
PERSON_THRESHOLD = 0.3
JOINT_THRESHOLD = 0.3

# OpenPose's 18 joints from COCO's 17 (None: the neck, the shoulders' midpoint)
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# OpenPose's limbs (pairs of the 18 joints) and its 18 colours
OPENPOSE_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                  (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
OPENPOSE_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
                    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
                    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


class PreprocessorError(UserError, ValueError):
    """A photo the preprocessor cannot turn into a control image; the message says why."""


# ---------------------------------------------------------------------------------------------------- filters
def _gray(image: Image.Image, blur: float) -> np.ndarray:
    gray = image.convert("L")
    if blur > 0:
        gray = gray.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(gray, dtype=np.float32)


def _sobel(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def canny(image: Image.Image, low: float = 100.0, high: float = 200.0, blur: float = 0.0) -> Image.Image:
    """Canny edges of ``image``: thresholds on the 3x3 Sobel magnitude of 0-255 pixels and no blur first, as
    ``cv2.Canny(image, 100, 200)`` in the Union ControlNets' examples (``blur``: a Gaussian sigma for noisy photos)."""
    gx, gy = _sobel(_gray(image, blur))
    magnitude = np.hypot(gx, gy)
    # thin: keep pixels that are the maximum along their gradient direction (4 directions)
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    p = np.pad(magnitude, 1)
    neighbours = {0: (p[1:-1, :-2], p[1:-1, 2:]), 45: (p[:-2, 2:], p[2:, :-2]), 90: (p[:-2, 1:-1], p[2:, 1:-1]),
                  135: (p[:-2, :-2], p[2:, 2:])}
    bins = (np.round(angle / 45.0).astype(int) % 4) * 45
    thin = np.zeros_like(magnitude, dtype=bool)
    for direction, (a, b) in neighbours.items():
        sel = bins == direction
        thin |= sel & (magnitude >= a) & (magnitude >= b)
    strong = thin & (magnitude >= high)
    weak = thin & (magnitude >= low)
    edges = strong.copy()
    while True:  # hysteresis: weak pixels joined (8-connected) to strong ones
        grown = np.pad(edges, 1)
        near = np.zeros_like(edges)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                near |= grown[dy:dy + edges.shape[0], dx:dx + edges.shape[1]]
        new = weak & near & ~edges
        if not new.any():
            break
        edges |= new
    return Image.fromarray((edges * 255).astype(np.uint8)).convert("RGB")


def soft_edge(image: Image.Image, blur: float = 2.0) -> Image.Image:
    """A soft edge map: the blurred image's gradient magnitude, scaled to 0-255."""
    gx, gy = _sobel(_gray(image, blur))
    magnitude = np.hypot(gx, gy)
    top = float(np.percentile(magnitude, 99.5)) or 1.0
    return Image.fromarray(np.clip(magnitude / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")


def gray(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


# ---------------------------------------------------------------------------------------------------- drawing
def draw_openpose(size: tuple[int, int], people: list[np.ndarray]) -> Image.Image:
    """An OpenPose skeleton image: per person an (18, 3) array of x, y (pixels) and a visibility (0 or 1)."""
    canvas = Image.new("RGB", size, "black")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(size) / 128))
    for joints in people:
        for k, (a, b) in enumerate(OPENPOSE_LIMBS):
            if joints[a, 2] and joints[b, 2]:
                colour = tuple(int(c * 0.6) for c in OPENPOSE_COLOURS[k])
                draw.line([tuple(joints[a, :2]), tuple(joints[b, :2])], fill=colour, width=width * 2)
        for k, (x, y, seen) in enumerate(joints):
            if seen:
                r = width + 1
                draw.ellipse([x - r, y - r, x + r, y + r], fill=OPENPOSE_COLOURS[k])
    return canvas


def openpose_joints(keypoints: np.ndarray, scores: np.ndarray, threshold: float = JOINT_THRESHOLD) -> np.ndarray:
    """COCO's 17 keypoints (x, y) and scores as OpenPose's 18 joints (x, y, seen); the neck is seen when both
    shoulders are."""
    seen = scores >= threshold
    joints = np.zeros((18, 3), dtype=np.float32)
    for k, c in enumerate(OPENPOSE_FROM_COCO):
        if c is None:
            if seen[5] and seen[6]:
                joints[k] = [*((keypoints[5] + keypoints[6]) / 2), 1]
        elif seen[c]:
            joints[k] = [*keypoints[c], 1]
    return joints


# ---------------------------------------------------------------------------------------------------- models
@dataclass
class Preprocessors:
    """The depth, pose and person-detector models, loaded on first use from their sources (hub ids or folders).

    ``for_models("tiny")`` (or a models directory with a ``preprocessors/`` folder) takes its folders."""

    depth_source: str = DEPTH_MODEL
    pose_source: str = POSE_MODEL
    person_source: str = PERSON_MODEL
    device: str = "cpu"
    _loaded: dict = field(default_factory=dict, repr=False)

    @classmethod
    def for_models(cls, models: str | None) -> "Preprocessors":
        folder = None
        if models == "tiny":
            from core.loading.tiny import ensure_tiny_bundle

            folder = ensure_tiny_bundle() / "preprocessors"
        elif models and models != "default" and (Path(models) / "preprocessors").is_dir():
            folder = Path(models) / "preprocessors"
        if folder is None:
            return cls()
        return cls(str(folder / "depth"), str(folder / "pose"), str(folder / "person"))

    def _load(self, what: str, source: str, model_class: str):
        if what not in self._loaded:
            import transformers
            from transformers import AutoImageProcessor

            from core.loading.sources import ModelSourceError, resolve_folder

            folder = resolve_folder(source, f"the {what} model")
            try:
                model = getattr(transformers, model_class).from_pretrained(folder).eval().to(self.device)
                processor = AutoImageProcessor.from_pretrained(folder)
            except (OSError, ValueError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ModelSourceError(f"cannot load the {what} model from {source}: {first[:200]}") from None
            self._loaded[what] = (model, processor)
        return self._loaded[what]

    def depth(self, image: Image.Image) -> Image.Image:
        """A depth map of ``image`` at its size, near = white."""
        import torch

        model, processor = self._load("depth", self.depth_source, "DepthAnythingForDepthEstimation")
        inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            predicted = model(**inputs).predicted_depth
        depth = torch.nn.functional.interpolate(predicted[:, None].float(), size=(image.height, image.width),
                                                mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
        low, high = float(depth.min()), float(depth.max())
        scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
        return Image.fromarray((scaled * 255).round().astype(np.uint8)).convert("RGB")

    def people(self, image: Image.Image) -> np.ndarray:
        """Boxes (N, 4) as x, y, width, height in pixels of the people the detector finds."""
        import torch

        model, processor = self._load("person detector", self.person_source, "RTDetrForObjectDetection")
        inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = model(**inputs)
        found = processor.post_process_object_detection(outputs, target_sizes=[(image.height, image.width)],
                                                        threshold=PERSON_THRESHOLD)[0]
        boxes = found["boxes"][found["labels"] == PERSON_LABEL].float().cpu().numpy().reshape(-1, 4)
        boxes[:, 2:] -= boxes[:, :2]  # corners to x, y, width, height (COCO boxes, as ViTPose takes them)
        return boxes[(boxes[:, 2] > 1) & (boxes[:, 3] > 1)]

    def pose(self, image: Image.Image, boxes: np.ndarray | None = None) -> Image.Image:
        """An OpenPose skeleton of the people in ``image`` (found by the detector unless ``boxes`` are given);
        :class:`PreprocessorError` when there is nobody."""
        import torch

        image = image.convert("RGB")
        boxes = self.people(image) if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if not len(boxes):
            raise PreprocessorError("no person found in the photo for a pose: use a photo with a person clearly "
                                    "visible, or give a ready skeleton with --control pose:FILE")
        model, processor = self._load("pose", self.pose_source, "VitPoseForPoseEstimation")
        inputs = processor(image, boxes=[boxes], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = model(**inputs)
        results = processor.post_process_pose_estimation(outputs, boxes=[boxes])[0]
        people = [openpose_joints(r["keypoints"].float().cpu().numpy(), r["scores"].float().cpu().numpy())
                  for r in results]
        people = [p for p in people if p[:, 2].sum() >= 2]
        if not people:
            raise PreprocessorError("no person's joints found in the photo for a pose: use a clearer photo, or give "
                                    "a ready skeleton with --control pose:FILE")
        return draw_openpose(image.size, people)

    def make(self, image: Image.Image, kind: str) -> Image.Image:
        """The control image of ``kind`` made from ``image``."""
        kind = check_kind(kind)
        if kind == "canny":
            return canny(image)
        if kind == "soft-edge":
            return soft_edge(image)
        if kind == "gray":
            return gray(image)
        if kind == "depth":
            return self.depth(image)
        return self.pose(image)


def make_control(image: Image.Image, kind: str, scale: float = DEFAULT_SCALE, *, models: str | None = None,
                 preprocessors: Preprocessors | None = None) -> tuple[ControlImage, list[str]]:
    """A :class:`ControlImage` of ``kind`` made from a photo or drawing; ``(control, notes)``."""
    kind = check_kind(kind)
    preprocessors = preprocessors or Preprocessors.for_models(models)
    made = preprocessors.make(image, kind)
    return ControlImage(made, kind, scale), [f"made a {kind} control image from the photo ({image.width}x"
                                             f"{image.height})"]
