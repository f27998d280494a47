"""Multi-character paired data (paper section 3.3, Fig. 3).

1. The base model draws several characters together (plain FLUX, no adapter).
2. A segmenter separates them: the foreground mask is split into connected regions, largest first, ordered left
   to right, one per character.
3. Each cut-out character, used as a reference with the adapter, is drawn again in new scenes.
4. Each row of the written dataset pairs the new-scene images (references, named) with the original group image
   (target) and the characters' boxes in it, so training sees different poses in reference and target (no
   copy-paste shortcut).

Segmenters follow :mod:`core.conditioning.segmentation` (any ``image -> L mask`` callable). The background-threshold segmenter
is built in; BiRefNet loads from the hub with ``trust_remote_code`` and only when asked for.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.conditioning.segmentation import BackgroundThresholdSegmenter, as_segmenter, isolate
from core.errors import UsageError

BIREFNET_REPO = "ZhengPeng7/BiRefNet"
LABEL_SIDE = 128  # connected regions are found on a mask at most this large (pure Python flood fill)

DEFAULT_SCENES = ("standing in a park", "walking on a beach", "sitting in a cafe", "in a snowy forest")


class BiRefNetSegmenter:
    """BiRefNet (Zheng et al. 2024, the paper's segmenter) from the hub; runs the repository's own code.

    Args:
        repo: hub id of the model.
        trust_remote_code: must be True: the model's code comes from its repository, not from transformers.
    """

    def __init__(self, repo: str = BIREFNET_REPO, trust_remote_code: bool = False, device: str | None = None):
        if not trust_remote_code:
            raise UsageError(f"BiRefNet runs code from the hub repository {repo}: pass trust_remote_code=True "
                             "(CLI: --trust-remote-code) if you trust it, or use the 'threshold' segmenter")
        from transformers import AutoModelForImageSegmentation

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForImageSegmentation.from_pretrained(repo, trust_remote_code=True).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB")
        x = np.asarray(rgb.resize((1024, 1024), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        pixels = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None].to(self.device)
        prediction = self.model(pixels)[-1].sigmoid()[0, 0].float().cpu().numpy()
        mask = Image.fromarray((prediction * 255).astype(np.uint8), "L")
        return mask.resize(rgb.size, Image.Resampling.BILINEAR)


def make_segmenter(name: str = "threshold", trust_remote_code: bool = False):
    """``"threshold"`` (built in) or ``"birefnet"`` (hub model, needs ``trust_remote_code``)."""
    if name == "birefnet":
        return BiRefNetSegmenter(trust_remote_code=trust_remote_code)
    return as_segmenter(name)


def split_regions(mask: Image.Image, count: int, min_fraction: float = 0.002) -> list[Image.Image]:
    """The ``count`` largest connected foreground regions of ``mask``, left to right, as full-size L masks.

    Regions are found on a downscaled copy (at most :data:`LABEL_SIDE` pixels a side) and scaled back.
    """
    full = mask.convert("L")
    scale = min(1.0, LABEL_SIDE / max(full.size))
    small = full.resize((max(1, round(full.width * scale)), max(1, round(full.height * scale))),
                        Image.Resampling.BOX)
    fg = np.asarray(small) > 127
    labels = np.zeros(fg.shape, dtype=np.int32)
    sizes = []
    h, w = fg.shape
    for y in range(h):
        for x in range(w):
            if not fg[y, x] or labels[y, x]:
                continue
            label = len(sizes) + 1
            labels[y, x] = label
            queue, size = deque([(y, x)]), 0
            while queue:
                cy, cx = queue.popleft()
                size += 1
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = label
                        queue.append((ny, nx))
            sizes.append(size)
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:count] if sizes[i] >= min_fraction * h * w]
    keep.sort(key=lambda label: np.nonzero(labels == label)[1].mean())
    out = []
    full_fg = np.asarray(full) > 127
    for label in keep:
        region = Image.fromarray(((labels == label) * 255).astype(np.uint8), "L").resize(full.size,
                                                                                        Image.Resampling.NEAREST)
        out.append(Image.fromarray((np.asarray(region) > 127) & full_fg).convert("L"))
    return out


def _box(mask: Image.Image) -> list[float]:
    left, top, right, bottom = mask.getbbox() or (0, 0, mask.width, mask.height)
    return [round(left / mask.width, 4), round(top / mask.height, 4), round(right / mask.width, 4),
            round(bottom / mask.height, 4)]


class MultiCharacterPairBuilder:
    """Builds a multi-character paired dataset with a pipeline and a segmenter.

    Args:
        pipe: an :class:`core.models.pipeline.InstantCharacterPipeline` (plain FLUX when called without characters).
        segmenter: ``image -> L mask`` (see :mod:`core.conditioning.segmentation`); default the background threshold.
    """

    def __init__(self, pipe, segmenter=None, resolution: int = 512, steps: int = 28, guidance_scale: float = 3.5,
                 max_sequence_length: int = 512):
        self.pipe = pipe
        self.segment = as_segmenter(segmenter) or BackgroundThresholdSegmenter()
        self.resolution, self.steps, self.guidance = resolution, steps, guidance_scale
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_models(cls, models: str, segmenter=None, **kwargs) -> "MultiCharacterPairBuilder":
        from core.models.pipeline import InstantCharacterPipeline
        from core.loading.sources import ModelSources

        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse(models), dtype=dtype)
        if torch.cuda.is_available():
            pipe.to("cuda")
        return cls(pipe, segmenter, **kwargs)

    def _generate(self, prompt: str, seed: int, characters=None) -> Image.Image:
        return self.pipe(prompt, characters=characters, height=self.resolution, width=self.resolution,
                         num_inference_steps=self.steps, guidance_scale=self.guidance,
                         generator=torch.Generator().manual_seed(seed),
                         max_sequence_length=self.max_sequence_length).images[0]

    def build(self, out: str | Path, names: list[str], descriptions: list[str] | None = None, count: int = 4,
              views: int = 2, scenes: tuple[str, ...] = DEFAULT_SCENES, seed: int = 0,
              group_images: list[Image.Image] | None = None) -> Path:
        """Writes ``out/dataset.jsonl`` (multi-character paired rows) and its images; returns the JSONL path.

        ``group_images`` replaces step 1 (e.g. images drawn elsewhere); groups whose segmentation finds fewer
        regions than characters are skipped and counted in ``out/skipped.json``.
        """
        from core.conditioning.character import Character

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        descriptions = descriptions or [f"character {n}" for n in names]
        if len(descriptions) != len(names):
            raise UsageError(f"{len(names)} names but {len(descriptions)} descriptions")
        together = " and ".join(descriptions)
        rows, skipped = [], []
        groups = group_images or [self._generate(f"{together} standing side by side, plain white background",
                                                 seed + i) for i in range(count)]
        for g, group in enumerate(groups):
            group = group.convert("RGB")
            regions = split_regions(self.segment(group), len(names))
            if len(regions) < len(names):
                skipped.append({"group": g, "found": len(regions)})
                continue
            group_path = out / f"group{g:04d}.png"
            group.save(group_path)
            references = []
            for name, words, region in zip(names, descriptions, regions):
                cutout = isolate(group, region)
                cut_path = out / f"group{g:04d}-{name}-cutout.png"
                cutout.save(cut_path)
                character = Character(cutout, name=name, description=words)
                for v in range(views):
                    scene = scenes[(g + v) % len(scenes)]
                    image = self._generate(f"[{name}] {scene}", seed + 1000 * (g + 1) + v, [character])
                    view_path = out / f"group{g:04d}-{name}-view{v}.png"
                    image.save(view_path)
                    if v == 0:
                        references.append({"name": name, "image": view_path.name, "box": _box(region)})
                    else:
                        references[-1].setdefault("extra_views", []).append(view_path.name)
            caption = " and ".join(f"[{n}]" for n in names) + " standing side by side"
            rows.append({"references": references, "target": group_path.name, "caption": caption})
        path = out / "dataset.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / "skipped.json").write_text(json.dumps(skipped))
        return path
