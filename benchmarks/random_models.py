"""Full-size models with random weights, so that anyone with a GPU can measure without a download.

:func:`ensure_random_models` writes once a models directory of FLUX.1-dev + SigLIP + DINOv2 + adapter with random
weights from the bundled configs (:func:`build_random_models`, about 42 GB on disk); :func:`build_random_pipeline`
makes the same models in memory. Each model is made by :func:`core.loading.tiny.random_model` (the tiny models'
builder, here at the configs' sizes), directly on the GPU when it fits.

Units: GiB (2**30 bytes).
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import time
from pathlib import Path

import torch

from core.errors import UsageError
from core.io.paths import cache_dir
from core.loading.model_sizes import CONFIG_DIR
from core.loading.tiny import (build_clip_tokenizer, build_t5_tokenizer, encoder_processors, flux_scheduler,
                               random_adapter, random_model)
from core.models.pipeline import InstantCharacterPipeline

GiB = 2**30
RANDOM_VERSION = "1"
_RANDOM_MARKER = "random-models.json"
FLUX_PARTS = ("transformer", "text_encoder", "text_encoder_2", "vae")


def _config(name: str) -> dict:
    cfg = json.loads((CONFIG_DIR / name).read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def full_size_configs() -> dict[str, dict]:
    """The bundled full-size configs: FLUX.1-dev's four models, SigLIP-so400m-384 and DINOv2-giant."""
    return {
        "transformer": _config("flux1-dev-transformer.json"),
        "text_encoder": _config("flux1-dev-text-encoder.json"),
        "text_encoder_2": _config("flux1-dev-text-encoder-2.json"),
        "vae": _config("flux1-dev-vae.json"),
        "siglip": _config("siglip-so400m-patch14-384-vision.json"),
        "dinov2": _config("dinov2-giant.json"),
    }


def projector_config_for(configs: dict[str, dict]):
    """The adapter's projector at the released sizes, with the encoders' joint width and the transformer's text
    width."""
    from core.models.projector import ProjectorConfig

    return ProjectorConfig(inner_dim=configs["siglip"]["hidden_size"] + configs["dinov2"]["hidden_size"],
                           output_dim=configs["transformer"]["joint_attention_dim"])


@contextlib.contextmanager
def building_on(device: torch.device, dtype: torch.dtype):
    """Modules made inside are created on ``device`` in ``dtype`` (no float32 copy on the CPU first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _build_device(params: int, dtype: torch.dtype) -> torch.device:
    """CUDA when the component fits in its free memory with room to spare, else the CPU."""
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        if params * torch.empty((), dtype=dtype).element_size() * 1.2 < free:
            return torch.device("cuda")
    return torch.device("cpu")


def free() -> None:
    """Collects garbage and returns cached GPU memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _params(make) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in make().parameters())


def _make_and_save(make, folder: Path, dtype: torch.dtype) -> None:
    with building_on(_build_device(_params(make), dtype), dtype):
        model = make()
    model.save_pretrained(folder)
    del model
    free()


def build_random_models(folder: str | Path, configs: dict[str, dict] | None = None, projector_config=None,
                        dtype: torch.dtype = torch.bfloat16) -> Path:
    """Writes a models directory (``flux/``, ``siglip/``, ``dinov2/``, ``adapter.safetensors``) of random weights.

    Args:
        folder: where to write it.
        configs: component configs (``full_size_configs()`` layout); default: the bundled full-size ones.
        projector_config: the adapter's :class:`~core.models.projector.ProjectorConfig`; default:
            :func:`projector_config_for` the configs.
        dtype: the weights' dtype on disk.

    Each model is created directly on the GPU when it fits (else on the CPU) in ``dtype`` with its classes' own
    random initialisation, saved, and freed before the next one. Tokenizers are the tiny byte/letter ones of
    :mod:`core.loading.tiny` (their token ids are all below the real vocabulary sizes).
    """
    from importlib.metadata import version

    from core.loading.checkpoint import save_adapter

    configs = configs or full_size_configs()
    folder = Path(folder)
    flux = folder / "flux"
    flux.mkdir(parents=True, exist_ok=True)
    for part in FLUX_PARTS:
        _make_and_save(lambda part=part: random_model(part, configs[part]), flux / part, dtype)
    index = {"_class_name": "FluxPipeline", "_diffusers_version": version("diffusers"),
             "feature_extractor": [None, None], "image_encoder": [None, None],
             "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"]}
    for name, tokenizer in (("tokenizer", build_clip_tokenizer()), ("tokenizer_2", build_t5_tokenizer())):
        tokenizer.save_pretrained(flux / name)
        index[name] = ["transformers", type(tokenizer).__name__]
    flux_scheduler().save_pretrained(flux / "scheduler")
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (flux / "model_index.json").write_text(json.dumps(index, indent=2))

    for part, processor in zip(("siglip", "dinov2"), encoder_processors(pil=False)):
        _make_and_save(lambda part=part: random_model(part, configs[part]), folder / part, dtype)
        processor.save_pretrained(folder / part)

    projector_config = projector_config or projector_config_for(configs)
    params = _params(lambda: random_adapter(projector_config, configs["transformer"])[0])
    with building_on(_build_device(params * 2, dtype), dtype):
        projector, layers = random_adapter(projector_config, configs["transformer"])
    save_adapter(folder / "adapter.safetensors", projector.state_dict(), layers.state_dict(),
                 {"source": "random weights for benchmarks"})
    del projector, layers
    free()
    return folder


def build_random_pipeline(configs: dict[str, dict] | None = None, projector_config=None,
                          device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """An :class:`InstantCharacterPipeline` of random weights made in memory on ``device`` (nothing on disk).

    The same models as :func:`build_random_models` (``configs``: the bundled full-size ones by default), each
    created directly on ``device`` in ``dtype`` with its classes' own initialisation from ``seed`` (the same
    weights in every process, so runs can compare latents); the full-size set takes about 40 GB of GPU memory.
    """
    configs = configs or full_size_configs()
    projector_config = projector_config or projector_config_for(configs)
    torch.manual_seed(seed)
    with building_on(torch.device(device), dtype):
        parts = {part: random_model(part, configs[part]) for part in (*FLUX_PARTS, "siglip", "dinov2")}
        parts["image_proj"], parts["character_layers"] = random_adapter(projector_config, configs["transformer"])
    for module in parts.values():
        module.eval()
    siglip_processor, dinov2_processor = encoder_processors(pil=False)
    pipe = InstantCharacterPipeline(scheduler=flux_scheduler(), tokenizer=build_clip_tokenizer(),
                                    tokenizer_2=build_t5_tokenizer(), siglip_processor=siglip_processor,
                                    dinov2_processor=dinov2_processor, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ensure_random_models(folder: str | Path | None = None, *, min_free_gib: float = 41.0, configs=None,
                         projector_config=None) -> Path:
    """The full-size random models directory, written on first use (about 42 GB; a minute or two on a GPU).

    ``folder`` defaults to ``<user cache>/random-models/full-v<N>``. Raises ``UsageError`` when the disk has
    less than ``min_free_gib`` free for a first build. ``configs`` / ``projector_config``: smaller stand-ins
    (:func:`build_random_models`), for rehearsals on the CPU.
    """
    folder = Path(folder) if folder else cache_dir("random-models") / f"full-v{RANDOM_VERSION}"
    if (folder / _RANDOM_MARKER).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    space = shutil.disk_usage(folder).free / GiB
    if space < min_free_gib:
        raise UsageError(f"random full-size models need about 42 GB on disk; {folder} has {space:.0f} GiB free")
    start = time.perf_counter()
    if configs is None and projector_config is None:
        build_random_models(folder)
    else:
        build_random_models(folder, configs=configs, projector_config=projector_config)
    (folder / _RANDOM_MARKER).write_text(json.dumps({"version": RANDOM_VERSION,
                                                     "seconds": round(time.perf_counter() - start, 1)}))
    return folder
