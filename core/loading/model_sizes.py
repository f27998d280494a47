"""Parameter counts of the full-size models, computed from their configs with no weights.

Each model is built on the ``meta`` device from its config (``FluxTransformer2DModel.from_config`` and friends),
so the counts follow the real module code, not a hand-written table. The full-size configs of FLUX.1-dev,
SigLIP-so400m-patch14-384 and DINOv2-giant ship in ``assets/configs/``; a local model folder's ``config.json`` is
read instead when one is given. The adapter's counts come from the released checkpoint's tensor layout
(``assets/configs/instantcharacter-adapter-layout.json``).

Building on meta needs torch, diffusers and transformers (seconds to import), so the counts of the bundled configs
are kept in ``assets/configs/model-sizes.json``, each under the SHA-256 of its config: a config with that hash is
answered from the file, any other one (a local folder's) is built. ``python -m core.loading.model_sizes`` rewrites the file;
``tests/core/test_model_sizes.py`` checks it against the meta-built counts.

All counts are numbers of parameters (elements), never bytes; ``core.loading.memory`` turns them into bytes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

CONFIG_DIR = Path(__file__).resolve().parents[2] / "assets" / "configs"
SIZES_FILE = CONFIG_DIR / "model-sizes.json"

# Component name -> (bundled config file, sub-folder of a local pipeline/model folder holding config.json).
BUNDLED_CONFIGS = {
    "transformer": ("flux1-dev-transformer.json", "transformer"),
    "text_encoder": ("flux1-dev-text-encoder.json", "text_encoder"),
    "text_encoder_2": ("flux1-dev-text-encoder-2.json", "text_encoder_2"),
    "vae": ("flux1-dev-vae.json", "vae"),
    "siglip": ("siglip-so400m-patch14-384-vision.json", ""),
    "dinov2": ("dinov2-giant.json", ""),
    # Shakker-Labs' FLUX.1-dev-ControlNet-Union-Pro-2.0 (6 double blocks, no single ones, no mode embedding)
    "controlnet": ("flux1-dev-controlnet-union-pro-2.0.json", ""),
}
ADAPTER_LAYOUT = CONFIG_DIR / "instantcharacter-adapter-layout.json"


@dataclass(frozen=True)
class ComponentSize:
    """Parameter counts of one model, as a quantizer and an offloader see it.

    Attributes:
        name: component name (``transformer``, ``text_encoder_2``, ``projector``, ...).
        params: all parameters (elements).
        quantizable_params: elements of ``nn.Linear`` weights a weight-only quantizer converts (bitsandbytes and
            quanto both replace ``nn.Linear`` only); excludes the modules the library keeps unquantized.
        quantizable_rows: summed ``out_features`` of those Linears; per-row scales cost bytes per row.
        kept_params: Linear weight elements that transformers' quantizers leave unconverted because the model
            class lists them in ``_keep_in_fp32_modules`` (T5's ``wo``); they stay in the compute dtype.
        largest_block_params: elements of the largest block of the top-level ``ModuleList``s (what
            block-level group offloading moves at once); for a model without block lists, its largest leaf.
        ungrouped_params: elements outside those block lists (embedders, final norms), resident while it runs.
        largest_leaf_params: elements of the largest module's own parameters (what leaf-level group offloading
            moves at once).
        config: the config the counts came from (for activation shapes).
        cast_skipped_params: elements of the converted Linear weights that diffusers' layerwise casting leaves
            in the compute dtype because their module names match its skip patterns (``norm``: FLUX's AdaLN
            modulation ``norm1.linear``, 3.2 B of its 11.9 B parameters; ``pos_embed``, ``proj_in``...).
    """

    name: str
    params: int
    quantizable_params: int
    quantizable_rows: int
    kept_params: int
    largest_block_params: int
    ungrouped_params: int
    largest_leaf_params: int
    config: Mapping
    cast_skipped_params: int = 0

    @property
    def other_params(self) -> int:
        """Elements that no quantizer touches (biases, norms, embeddings, convolutions, kept Linears)."""
        return self.params - self.quantizable_params


def _read_config(name: str, local_dir: str | Path | None) -> dict:
    bundled, sub = BUNDLED_CONFIGS[name]
    if local_dir is not None:
        path = Path(local_dir) / sub / "config.json"
        if path.is_file():
            return json.loads(path.read_text())
    return json.loads((CONFIG_DIR / bundled).read_text())


def config_hash(config: Mapping) -> str:
    """SHA-256 of a config's JSON with sorted keys: the key of its counts in ``SIZES_FILE``."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _build_on_meta(name: str, config: dict) -> torch.nn.Module:
    """Build the model class of ``name`` from ``config`` on the meta device (no memory, no weights)."""
    import torch

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        if name == "transformer":
            from diffusers import FluxTransformer2DModel

            return FluxTransformer2DModel.from_config(cfg)
        if name == "controlnet":
            from diffusers import FluxControlNetModel

            return FluxControlNetModel.from_config(cfg)
        if name == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_config(cfg)
        if name == "text_encoder":
            from transformers import CLIPTextConfig, CLIPTextModel

            return CLIPTextModel(CLIPTextConfig(**cfg))
        if name == "text_encoder_2":
            from transformers import T5Config, T5EncoderModel

            return T5EncoderModel(T5Config(**cfg))
        if name == "siglip":
            from transformers import SiglipVisionConfig, SiglipVisionModel

            return SiglipVisionModel(SiglipVisionConfig(**cfg))
        if name == "dinov2":
            from transformers import Dinov2Config, Dinov2Model

            return Dinov2Model(Dinov2Config(**cfg))
    raise KeyError(f"unknown component {name!r}; expected one of {sorted(BUNDLED_CONFIGS)}")


def kept_module_names(model: torch.nn.Module) -> list[str]:
    """Module-name patterns a transformers quantizer leaves unconverted for this model class (e.g. T5's ``wo``)."""
    names: list[str] = []
    for attr in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict"):
        names += list(getattr(model, attr, None) or [])
    return sorted(set(names))


def _is_kept(module_name: str, kept: list[str]) -> bool:
    parts = module_name.split(".")
    return any(k in parts or fnmatch.fnmatch(module_name, k) for k in kept)


def _cast_skip_patterns(model) -> list[str]:
    """diffusers' layerwise-casting skip patterns for ``model`` (its defaults plus the class's own)."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    return list(DEFAULT_SKIP_MODULES_PATTERN) + list(getattr(model, "_skip_layerwise_casting_patterns", None) or [])


def size_of_module(name: str, model: torch.nn.Module, config: Mapping) -> ComponentSize:
    """Count a built (meta or real) module's parameters the way quantizers and group offloading see them."""
    import torch

    kept = kept_module_names(model)
    skip = _cast_skip_patterns(model)
    quant = rows = kept_params = skipped = 0
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if _is_kept(module_name, kept):
                kept_params += module.weight.numel()
            else:
                quant += module.weight.numel()
                rows += module.out_features
                if any(re.search(p, module_name) for p in skip):
                    skipped += module.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    block_sizes: list[int] = []
    grouped = 0
    for child in model.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            for block in child:
                n = sum(p.numel() for p in block.parameters())
                block_sizes.append(n)
                grouped += n
    leaf = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    if not block_sizes:  # no top-level block list: diffusers would onload it whole; count it leaf by leaf
        block_sizes, grouped = [leaf], total
    return ComponentSize(
        name=name,
        params=total,
        quantizable_params=quant,
        quantizable_rows=rows,
        kept_params=kept_params,
        largest_block_params=max(block_sizes),
        ungrouped_params=total - grouped,
        largest_leaf_params=leaf,
        config=dict(config),
        cast_skipped_params=skipped,
    )


@lru_cache(maxsize=8)
def _model_size_cached(name: str, config_json: str) -> ComponentSize:
    config = json.loads(config_json)
    return size_of_module(name, _build_on_meta(name, config), config)


@lru_cache(maxsize=1)
def _stored_counts() -> dict[str, dict]:
    """``SIZES_FILE``'s counts by component name (empty when the file is missing)."""
    if not SIZES_FILE.is_file():
        return {}
    return json.loads(SIZES_FILE.read_text())["components"]


def write_sizes_file(path: str | Path = SIZES_FILE) -> Path:
    """Builds every bundled config on meta and writes its counts to ``path`` (``SIZES_FILE`` by default)."""
    from importlib.metadata import version

    components = {}
    for name in BUNDLED_CONFIGS:
        config = _read_config(name, None)
        size = size_of_module(name, _build_on_meta(name, config), config)
        counts = {f.name: getattr(size, f.name) for f in dataclasses.fields(size) if f.name not in ("name", "config")}
        components[name] = {"config_sha256": config_hash(config), **counts}
    record = {"note": "parameter counts of the bundled configs, built on meta by python -m core.loading.model_sizes",
              "built_with": {lib: version(lib) for lib in ("torch", "diffusers", "transformers")},
              "components": components}
    path = Path(path)
    path.write_text(json.dumps(record, indent=1) + "\n")
    _stored_counts.cache_clear()
    return path


def model_size(name: str, local_dir: str | Path | None = None) -> ComponentSize:
    """Counts of one full-size component, from ``local_dir``'s ``config.json`` when present, else the bundled one.

    Args:
        name: ``transformer``, ``text_encoder`` (CLIP-L), ``text_encoder_2`` (T5-XXL), ``vae``, ``siglip``,
            ``dinov2``.
        local_dir: a diffusers pipeline folder (for the FLUX components: ``<dir>/<name>/config.json``) or a model
            folder (for ``siglip`` / ``dinov2``: ``<dir>/config.json``).
    """
    config = _read_config(name, local_dir)
    stored = _stored_counts().get(name)
    if stored is not None and stored["config_sha256"] == config_hash(config):
        counts = {k: v for k, v in stored.items() if k != "config_sha256"}
        return ComponentSize(name=name, config=config, **counts)
    return _model_size_cached(name, json.dumps(config, sort_keys=True))


def size_of_layout(name: str, shapes: Mapping[str, list[int] | tuple[int, ...]], copies: int = 1) -> ComponentSize:
    """Counts from a state dict's ``{key: shape}`` layout (``copies`` identical modules, e.g. 57 processors).

    A 2-D ``*.weight`` is an ``nn.Linear`` weight (the adapter has no convolutions or embeddings); everything
    else (biases, norm scales, the resampler's learned latents) stays in the compute dtype. One copy is one
    offload block; a module is a key's prefix before its last dot.
    """
    total = quant = rows = 0
    per_module: dict[str, int] = {}
    for key, shape in shapes.items():
        n = math.prod(shape)
        total += n
        module = key.rsplit(".", 1)[0] if "." in key else ""
        per_module[module] = per_module.get(module, 0) + n
        if key.endswith(".weight") and len(shape) == 2:
            quant += n
            rows += shape[0]
    return ComponentSize(
        name=name,
        params=total * copies,
        quantizable_params=quant * copies,
        quantizable_rows=rows * copies,
        kept_params=0,
        largest_block_params=total,
        ungrouped_params=0,
        largest_leaf_params=max(per_module.values()),
        config={"copies": copies},
    )


@lru_cache(maxsize=1)
def adapter_sizes() -> tuple[ComponentSize, ComponentSize]:
    """(projector, processors) counts of the released InstantCharacter adapter.

    The projector (``image_proj``) has 1,360,116,096 parameters; the 57 attention processors 25,172,224 each
    (1,434,816,768 together): 2,794,932,864 in all.
    """
    layout = json.loads(ADAPTER_LAYOUT.read_text())
    projector = size_of_layout("projector", layout["image_proj"])
    processors = size_of_layout("adapter_processors", layout["processor"], copies=layout["num_processors"])
    return projector, processors


def all_sizes(flux_dir: str | Path | None = None, siglip_dir: str | Path | None = None,
              dinov2_dir: str | Path | None = None, adapter: bool = True, controlnet: bool = False,
              controlnet_dir: str | Path | None = None) -> dict[str, ComponentSize]:
    """Counts of every component the studio loads; without ``adapter``, plain FLUX.1-dev (4 components); with
    ``controlnet``, the ControlNet control images use (``controlnet_dir``'s config, else Union-Pro-2.0's)."""
    sizes = {name: model_size(name, flux_dir) for name in ("transformer", "text_encoder", "text_encoder_2", "vae")}
    if adapter:
        sizes["siglip"] = model_size("siglip", siglip_dir)
        sizes["dinov2"] = model_size("dinov2", dinov2_dir)
        sizes["projector"], sizes["adapter_processors"] = adapter_sizes()
    if controlnet:
        sizes["controlnet"] = model_size("controlnet", controlnet_dir)
    return sizes


if __name__ == "__main__":
    print(f"wrote {write_sizes_file(*sys.argv[1:2])}")
