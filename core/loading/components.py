"""Loading every component of :class:`~core.models.pipeline.InstantCharacterPipeline` from its sources."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from core.loading.checkpoint import build_adapter, check_compatible, read_adapter
from core.loading.component_files import (FLUX_TOKENIZERS, PART_NAME, PARTS, TOKENIZER_PATTERNS,
                                          bundled_flux_folder, inspect_file, load_part,
                                          vision_tower_folder)
from core.loading.single_file import load_transformer_file
from core.loading.sources import (BASE_PATTERNS, DEFAULT_BASE, ModelSourceError, ModelSources, resolve_file,
                                  resolve_folder)

log = logging.getLogger(__name__)


def _from_pretrained(load, path: str, what: str, **kwargs):
    try:
        return load(path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"cannot load {what} from {path}: {first}") from None


def _base_folder(sources: ModelSources, files: dict) -> tuple[str, dict]:
    """``(folder, tokenizers)``: the base's folder, fetched without the weights files replace; with every FLUX part
    from a file and the default (gated) base, the bundled configs and the tokenizers from ungated repositories."""
    if sources.base == DEFAULT_BASE and set(files) == set(PARTS):
        from transformers import CLIPTokenizer, T5TokenizerFast

        tokenizers = {}
        for name, cls in (("tokenizer", CLIPTokenizer), ("tokenizer_2", T5TokenizerFast)):
            folder = resolve_folder(FLUX_TOKENIZERS[name], f"the {name} of FLUX.1", TOKENIZER_PATTERNS)
            tokenizers[name] = _from_pretrained(cls.from_pretrained, folder, f"the tokenizer {FLUX_TOKENIZERS[name]}")
        return str(bundled_flux_folder()), tokenizers
    ignore = [f"{part}/*.safetensors" for part in files]
    return resolve_folder(sources.base, "FLUX base model", BASE_PATTERNS, ignore_patterns=ignore or None), {}


def load_components(base=None, *, siglip=None, dinov2=None, adapter=None, dtype=torch.bfloat16,
                    progress: bool = True, **flux_kwargs) -> dict:
    """Resolves the four sources, loads each model and returns the pipeline's constructor arguments.

    A ``base`` that is a models directory (with ``flux/``, ``siglip/``, ``dinov2/`` and an adapter file)
    supplies the other sources unless they are given explicitly.
    """
    from diffusers import FluxPipeline
    from transformers import AutoImageProcessor, AutoModel, SiglipVisionModel

    if isinstance(base, ModelSources):
        sources = base
    elif base in (None, "default", "tiny") or (Path(base).is_dir() and (Path(base) / "flux").is_dir()):
        sources = ModelSources.parse(None if base is None else str(base))
    else:
        sources = ModelSources(base=str(base))
    sources = sources.override(siglip=siglip, dinov2=dinov2, adapter=adapter)

    files = sources.part_files()
    log.info("loading FLUX from %s%s", sources.base,
             "".join(f" ({part} {path})" for part, path in files.items()))
    base_path, tokenizers = _base_folder(sources, files)
    quantization = flux_kwargs.get("quantization_config")
    mapping = getattr(quantization, "quant_mapping", None) or {}
    if "transformer" in files:
        flux_kwargs["transformer"] = load_transformer_file(files["transformer"], dtype, base_path,
                                                           quantization_config=mapping.pop("transformer", None))
    for part in ("vae", "text_encoder", "text_encoder_2"):
        if part not in files:
            continue
        if part in mapping:  # bitsandbytes quantizes while transformers loads a folder, not a single file
            raise ModelSourceError(f"{files[part]}: a {PART_NAME[part]} file cannot be loaded under a preset that "
                                   "quantizes it with bitsandbytes; choose the fp8 or a quanto preset")
        config = base_path if (Path(base_path) / part / "config.json").is_file() else bundled_flux_folder()
        flux_kwargs[part] = load_part(inspect_file(files[part]), part, dtype, config)
    if quantization is not None and not mapping:
        flux_kwargs.pop("quantization_config")
    flux = _from_pretrained(FluxPipeline.from_pretrained, base_path, "the FLUX base model", dtype=dtype,
                            **tokenizers, **flux_kwargs)
    if not progress:
        flux.set_progress_bar_config(disable=True)
    siglip_file = Path(sources.siglip).expanduser()
    siglip_path = vision_tower_folder(siglip_file) if siglip_file.is_file() else resolve_folder(sources.siglip, "SigLIP")
    dinov2_path = resolve_folder(sources.dinov2, "DINOv2")
    siglip_model = _from_pretrained(SiglipVisionModel.from_pretrained, siglip_path, "SigLIP", dtype=dtype)
    # the PIL processors always: the released numbers (and the golden outputs) come from them, and with
    # torchvision installed transformers would otherwise switch to its torchvision backend
    siglip_processor = _from_pretrained(AutoImageProcessor.from_pretrained, siglip_path, "the SigLIP processor",
                                        backend="pil")
    dinov2_model = _from_pretrained(AutoModel.from_pretrained, dinov2_path, "DINOv2", dtype=dtype)
    dinov2_processor = _from_pretrained(AutoImageProcessor.from_pretrained, dinov2_path, "the DINOv2 processor",
                                        backend="pil")

    weights = read_adapter(resolve_file(sources.adapter))
    encoder_width = siglip_model.config.hidden_size + dinov2_model.config.hidden_size
    check_compatible(weights.config, flux.transformer, encoder_width, weights.source)
    image_proj, layers = build_adapter(weights, dtype)
    components = dict(flux.components)
    components.update(siglip=siglip_model.eval(), siglip_processor=siglip_processor, dinov2=dinov2_model.eval(),
                      dinov2_processor=dinov2_processor, image_proj=image_proj, character_layers=layers)
    return components


CONTROLNET_CONFIG = "flux1-dev-controlnet-union-pro-2.0.json"  # in assets/configs: the config of a lone file


def load_controlnet(spec: str, dtype=torch.bfloat16):
    """A ``FluxControlNetModel`` from a hub id, a diffusers folder or a single ``.safetensors`` file in diffusers
    keys (a ComfyUI ``models/controlnet/`` file); a lone file takes the ``config.json`` beside it, else
    Union-Pro-2.0's. Failures are :class:`ModelSourceError` (one line)."""
    from diffusers import FluxControlNetModel

    path = Path(str(spec)).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        from core.loading.model_sizes import CONFIG_DIR

        if not path.is_file():
            raise ModelSourceError(f"ControlNet file not found: {spec}")
        beside = path.parent / "config.json"
        config = json.loads((beside if beside.is_file() else CONFIG_DIR / CONTROLNET_CONFIG).read_text())
        with torch.device("meta"):
            net = FluxControlNetModel.from_config(config)
        try:
            state = load_file(str(path))
            net.load_state_dict(state, strict=True, assign=True)
        except (OSError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelSourceError(f"cannot load the ControlNet from {spec}: {first[:300]}") from None
        return net.to(dtype).eval()
    folder = resolve_folder(str(spec), "ControlNet", ["*.json", "*.safetensors"])
    return _from_pretrained(FluxControlNetModel.from_pretrained, folder, "the ControlNet", dtype=dtype).eval()
