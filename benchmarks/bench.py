"""Speed and memory of one generation: load time, seconds per step and per image, peak GPU memory and RAM.

:func:`run_bench` loads a models directory through the engine (:class:`core.engine.Engine`: the studio's own
path, ``from_pretrained`` with the preset's ``quantization_config``, then ``apply_preset``), makes one warm-up image
and one timed image of a synthetic character with ``Engine.generate``, and returns the figures. With
``random_weights`` the models directory is a full-size FLUX.1-dev + SigLIP + DINOv2 + adapter with random weights,
built once from the bundled configs (:func:`ensure_random_models`, about 42 GB on disk) so that anyone with a GPU
can measure without a download.

``as_released`` measures the released code's way of running: the whole projector recomputed from the encoder
features at every step and nothing cached between calls (:class:`ReleasedStylePipeline`, made of the engine's
loaded pipeline by :func:`released_style`), bf16, no offload.

Units: seconds, GiB (2**30 bytes).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import platform
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from core.engine import Engine
from core.loading.model_sizes import CONFIG_DIR
from core.io.paths import cache_dir
from core.models.pipeline import InstantCharacterPipeline
from core.errors import UsageError

GiB = 2**30
REFERENCE_STEPS = 28  # FLUX.1-dev's usual step count; s/image is also given at this count
RANDOM_VERSION = "1"
_RANDOM_MARKER = "random-models.json"
BENCH_PROMPT = "a character standing in a sunny park, detailed illustration"


# ----------------------------------------------------------------------------------------------- as released
class _StepTokens(Sequence):
    """Per-step character tokens made when a step asks for them (inside the denoising loop)."""

    def __init__(self, make, length: int):
        self._make, self._length = make, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i):
        return self._make(i)


class ReleasedStylePipeline(InstantCharacterPipeline):
    """The released code's cost model: the whole projector runs from the encoder features at every step.

    Nothing is reused between calls (features, projector context and prompt embeddings are recomputed); the
    image is encoded once per call, as the released code does. Outputs equal :class:`InstantCharacterPipeline`'s.
    """

    def __call__(self, *args, **kwargs):
        self.clear_caches()
        return super().__call__(*args, **kwargs)

    def _character_tokens(self, characters, timesteps, dtype, device, batch, *args, **kwargs):
        parent = super()._character_tokens

        def tokens_at(i):
            self.clear_character_contexts()  # the whole projector again, from the (once per call) encoder features
            return parent(characters, timesteps[i:i + 1], dtype, device, batch, *args, **kwargs)[0]

        return _StepTokens(tokens_at, len(timesteps))


def released_style(pipe: InstantCharacterPipeline) -> ReleasedStylePipeline:
    """``pipe`` (loaded by the engine) running the released code's way from now on: the same models and weights, only
    :class:`ReleasedStylePipeline`'s methods (it adds no state of its own)."""
    pipe.__class__ = ReleasedStylePipeline
    pipe.clear_caches()
    return pipe


# ------------------------------------------------------------------------------------------- random models
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


@contextlib.contextmanager
def _building(device: torch.device, dtype: torch.dtype):
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


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _make_and_save(make, folder: Path, params: int, dtype: torch.dtype) -> None:
    with _building(_build_device(params, dtype), dtype):
        model = make().eval()
    model.save_pretrained(folder)
    del model
    _free()


def build_random_models(folder: str | Path, configs: dict[str, dict] | None = None, projector_config=None,
                        dtype: torch.dtype = torch.bfloat16) -> Path:
    """Writes a models directory (``flux/``, ``siglip/``, ``dinov2/``, ``adapter.safetensors``) of random weights.

    Args:
        folder: where to write it.
        configs: component configs (``full_size_configs()`` layout); default: the bundled full-size ones.
        projector_config: the adapter's :class:`~core.models.projector.ProjectorConfig`; default: the released sizes
            with the encoders' joint width and the transformer's text width.
        dtype: the weights' dtype on disk.

    Each model is created directly on the GPU when it fits (else on the CPU) in ``dtype`` with its classes' own
    random initialisation, saved, and freed before the next one. Tokenizers are the tiny byte/letter ones of
    :mod:`core.loading.tiny` (their token ids are all below the real vocabulary sizes).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import (
        BitImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        Dinov2Config,
        Dinov2Model,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    from core.models.attention import CharacterAttentionLayers
    from core.loading.checkpoint import save_adapter
    from core.loading.model_sizes import size_of_module
    from core.models.projector import CharacterProjector, ProjectorConfig
    from core.loading.tiny import build_clip_tokenizer, build_t5_tokenizer

    configs = configs or full_size_configs()
    folder = Path(folder)
    flux = folder / "flux"
    flux.mkdir(parents=True, exist_ok=True)

    def params(name, make):
        with torch.device("meta"):
            return size_of_module(name, make(), {}).params

    makers = {
        "transformer": lambda: FluxTransformer2DModel.from_config(configs["transformer"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        "text_encoder_2": lambda: T5EncoderModel(T5Config(**{**configs["text_encoder_2"], "dropout_rate": 0.0})),
        "vae": lambda: AutoencoderKL.from_config(configs["vae"]),
    }
    index = {"_class_name": "FluxPipeline", "_diffusers_version": _version("diffusers"),
             "feature_extractor": [None, None], "image_encoder": [None, None]}
    for name, make in makers.items():
        _make_and_save(make, flux / name, params(name, make), dtype)
    index.update(transformer=["diffusers", "FluxTransformer2DModel"], vae=["diffusers", "AutoencoderKL"],
                 text_encoder=["transformers", "CLIPTextModel"], text_encoder_2=["transformers", "T5EncoderModel"])
    for name, tokenizer in (("tokenizer", build_clip_tokenizer()), ("tokenizer_2", build_t5_tokenizer())):
        tokenizer.save_pretrained(flux / name)
        index[name] = ["transformers", type(tokenizer).__name__]
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    scheduler.save_pretrained(flux / "scheduler")
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (flux / "model_index.json").write_text(json.dumps(index, indent=2))

    siglip_cfg, dinov2_cfg = configs["siglip"], configs["dinov2"]
    encoders = {
        "siglip": lambda: SiglipVisionModel(SiglipVisionConfig(**siglip_cfg)),
        "dinov2": lambda: Dinov2Model(Dinov2Config(**dinov2_cfg)),
    }
    for name, make in encoders.items():
        _make_and_save(make, folder / name, params(name, make), dtype)
    SiglipImageProcessor(size={"height": 384, "width": 384}, resample=3, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(folder / "siglip")
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                      resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(folder / "dinov2")

    tcfg = configs["transformer"]
    projector_config = projector_config or ProjectorConfig(
        inner_dim=siglip_cfg["hidden_size"] + dinov2_cfg["hidden_size"], output_dim=tcfg["joint_attention_dim"])
    layers = tcfg["num_layers"] + tcfg["num_single_layers"]
    width, head_dim = tcfg["num_attention_heads"] * tcfg["attention_head_dim"], tcfg["attention_head_dim"]
    with torch.device("meta"):
        adapter_params = sum(p.numel() for p in CharacterProjector(projector_config).parameters())
    with _building(_build_device(adapter_params * 2, dtype), dtype):
        projector = CharacterProjector(projector_config)
        processors = CharacterAttentionLayers(layers, width, projector_config.output_dim, head_dim)
    save_adapter(folder / "adapter.safetensors", projector.state_dict(), processors.state_dict(),
                 {"source": "random weights for benchmarks"})
    del projector, processors
    _free()
    return folder


def build_random_pipeline(configs: dict[str, dict] | None = None, projector_config=None,
                          device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """An :class:`InstantCharacterPipeline` of random weights made in memory on ``device`` (nothing on disk).

    The same models as :func:`build_random_models` (``configs``: the bundled full-size ones by default), each
    created directly on ``device`` in ``dtype`` with its classes' own initialisation from ``seed`` (the same
    weights in every process, so runs can compare latents); the full-size set takes about 40 GB of GPU memory.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import (BitImageProcessor, CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model,
                              SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel, T5Config, T5EncoderModel)

    from core.loading.tiny import build_clip_tokenizer, build_t5_tokenizer
    from core.models.attention import CharacterAttentionLayers
    from core.models.projector import CharacterProjector, ProjectorConfig

    configs = configs or full_size_configs()
    siglip_cfg, dinov2_cfg, tcfg = configs["siglip"], configs["dinov2"], configs["transformer"]
    projector_config = projector_config or ProjectorConfig(
        inner_dim=siglip_cfg["hidden_size"] + dinov2_cfg["hidden_size"], output_dim=tcfg["joint_attention_dim"])
    width, head_dim = tcfg["num_attention_heads"] * tcfg["attention_head_dim"], tcfg["attention_head_dim"]
    torch.manual_seed(seed)
    with _building(torch.device(device), dtype):
        parts = dict(
            transformer=FluxTransformer2DModel.from_config(tcfg),
            text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            text_encoder_2=T5EncoderModel(T5Config(**{**configs["text_encoder_2"], "dropout_rate": 0.0})),
            vae=AutoencoderKL.from_config(configs["vae"]),
            siglip=SiglipVisionModel(SiglipVisionConfig(**siglip_cfg)),
            dinov2=Dinov2Model(Dinov2Config(**dinov2_cfg)),
            image_proj=CharacterProjector(projector_config),
            character_layers=CharacterAttentionLayers(tcfg["num_layers"] + tcfg["num_single_layers"], width,
                                                      projector_config.output_dim, head_dim))
    for module in parts.values():
        module.eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    siglip_processor = SiglipImageProcessor(size={"height": 384, "width": 384}, resample=3, image_mean=[0.5] * 3,
                                            image_std=[0.5] * 3)
    dinov2_processor = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                         do_center_crop=True, resample=3, image_mean=[0.485, 0.456, 0.406],
                                         image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)
    pipe = InstantCharacterPipeline(scheduler=scheduler, tokenizer=build_clip_tokenizer(),
                                    tokenizer_2=build_t5_tokenizer(), siglip_processor=siglip_processor,
                                    dinov2_processor=dinov2_processor, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


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
    free = shutil.disk_usage(folder).free / GiB
    if free < min_free_gib:
        raise UsageError(f"random full-size models need about 42 GB on disk; {folder} has {free:.0f} GiB free")
    start = time.perf_counter()
    if configs is None and projector_config is None:
        build_random_models(folder)
    else:
        build_random_models(folder, configs=configs, projector_config=projector_config)
    (folder / _RANDOM_MARKER).write_text(json.dumps({"version": RANDOM_VERSION,
                                                     "seconds": round(time.perf_counter() - start, 1)}))
    return folder


# ------------------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TokensAhead:
    """Times the per-step character tokens that ``pipe`` makes ahead of its denoising loop.

    The pipeline makes every step's character tokens (the time resampler, the text adapter) before the loop; the
    released way makes them inside each step (:class:`ReleasedStylePipeline`, whose call returns at once). After
    a generation, :meth:`seconds` runs the last such call again with the caches it filled still warm (encoder
    features, projector context), so it times the per-step work alone: ``s_per_step`` then holds the same work
    in both ways.
    """

    def __init__(self, pipe, device: torch.device):
        self.device, self._last = device, None
        self._make = pipe._character_tokens  # the bench's instrumentation seam, as ReleasedStylePipeline overrides

        def remember(*args, **kwargs):
            self._last = (args, kwargs)
            return self._make(*args, **kwargs)

        pipe._character_tokens = remember

    def seconds(self) -> float:
        if self._last is None:
            return 0.0
        args, kwargs = self._last
        _sync(self.device)
        start = time.perf_counter()
        tokens = self._make(*args, **kwargs)
        if isinstance(tokens, list):  # a lazy sequence (the released way) makes nothing ahead
            _sync(self.device)
            return time.perf_counter() - start
        return 0.0


def peak_ram_bytes() -> int | None:
    """This process's peak resident memory (``getrusage`` max RSS), or None where unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        try:
            import psutil

            return int(psutil.Process().memory_info().peak_wset)
        except (ImportError, AttributeError):
            return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def bench_character(size: int = 512):
    """A synthetic character image (a smooth colour gradient with a disc): no files needed."""
    import numpy as np
    from PIL import Image

    from core.conditioning.character import Character

    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - 0.5) ** 2 + (y - 0.45) ** 2 < 0.08).astype(float)
    rgb = np.stack([x, y, 0.5 + 0.5 * disc], axis=-1)
    return Character(Image.fromarray((rgb * 255).astype("uint8")), name="hero", scale=0.9)


def resolve_bench_preset(preset: str, device: torch.device, width: int, height: int, quantization: str | None = None):
    """The ``MemoryPreset`` to measure and notes on any substitution (auto choice, quanto instead of bitsandbytes)."""
    from core.loading.memory import QUANTO_ALTERNATIVE, bitsandbytes_usable, choose_preset, detect_memory, get_preset

    notes = []
    if preset == "auto":
        found = detect_memory()
        chosen, _, reason = choose_preset(found.vram_total_bytes, found.ram_total_bytes, width, height,
                                          bitsandbytes_ok=bitsandbytes_usable())
        notes.append(f"auto: {reason}")
        chosen = get_preset(chosen.name, quantization) if quantization else chosen
    else:
        chosen = get_preset(preset, quantization)
    if chosen.needs_bitsandbytes and not (device.type == "cuda" and bitsandbytes_usable()):
        chosen = chosen.with_quantization(QUANTO_ALTERNATIVE)
        notes.append(f"bitsandbytes cannot run on {device.type}: measured with {QUANTO_ALTERNATIVE} instead")
    return chosen, notes


def run_bench(preset: str = "auto", width: int = 1024, height: int = 1024, steps: int = REFERENCE_STEPS,
              random_weights: bool = False, models_spec: str = "default", as_released: bool = False, *,
              quantization: str | None = None, device: str | torch.device | None = None,
              dtype: torch.dtype | None = None, warmup: bool = True, random_dir: str | Path | None = None,
              verbose: bool = True, speed=None, draft: bool = False, run: str | None = None,
              in_memory: bool = False, configs: dict | None = None, projector_config=None,
              latents_path: str | Path | None = None, base: str | Path | None = None,
              adapter: str | None = None) -> dict:
    """Loads the models with ``preset`` applied, makes a warm-up image and a timed one, and returns the figures.

    Args:
        preset: ``auto``, ``full``, ``balanced``, ``low`` or ``minimal`` (ignored with ``as_released``: bf16,
            no offload).
        width, height: image size in pixels; steps: denoising steps of the timed image.
        random_weights: full-size models with random weights (:func:`ensure_random_models`), not ``models_spec``.
        models_spec: ``default`` (the real models), ``tiny`` or a models directory.
        as_released: run :class:`ReleasedStylePipeline` (projector every step, no caching).
        quantization: replaces the preset's transformer/T5 quantization (e.g. ``quanto-int8``).
        device: default CUDA when available, else the CPU. dtype: default bf16 on CUDA, float32 on the CPU.
        warmup: make a 2-step image first, so one-time setup (kernels, autotuning, offload hooks) is not timed.
        random_dir: where the random models are (or will be) written.
        verbose: print the figures (:func:`format_result`).
        speed: a speed mode name or :class:`core.loading.speed.SpeedOptions` given to the engine (default off).
        draft: the requests ask for a draft (the step cache).
        run: the run's name in the record (default ``as-released`` or the preset's name).
        in_memory: random-weight models built in memory on ``device`` (:func:`build_random_pipeline`, with
            ``configs`` / ``projector_config``; default the full-size ones), nothing loaded from disk.
        latents_path: after the timed image, make the same request once more as latents and save them there
            (safetensors, key ``latents``) so modes can be compared on the same seed.
        base: a single transformer file (``.gguf``, BFL ``.safetensors``) replacing the models' transformer.
        adapter: a trained image adapter file in place of the models' own (``bench --adapter``).

    Returns:
        A JSON-ready dict: ``load_s``, ``s_per_step`` (median of the timed image's steps after the first, plus the
        per-step character tokens the pipeline makes ahead of the loop divided by the steps, so that a step
        always counts its time resampler, as the released way does inside the step; ``tokens_ahead_s``,
        :class:`TokensAhead`),
        ``s_per_image`` (the timed ``Engine.generate``: prompt and character encoding, ``steps`` steps, VAE
        decode, and the request's checks and PNG record, a few tens of ms; caches cleared first),
        ``s_per_image_at_28`` (extrapolated with ``s_per_step`` when ``steps`` is not 28),
        ``gpu_peak_gib`` (``torch.cuda.max_memory_allocated`` while generating), ``gpu_peak_load_gib``,
        ``ram_peak_gib`` (process max RSS, loading included), the planner's ``estimate_gpu_gib`` /
        ``estimate_ram_gib`` for full-size models, ``compile_s`` (the warm-up image's time beyond the same steps
        at the timed rate: compiling, autotuning, first CUDA use), and the preset, speed, device and notes.
    """
    from core.loading.memory import estimate, get_preset
    from core.request import GenerationRequest
    from core.loading.sources import ModelSources

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if random_weights and models_spec not in (None, "", "default"):
        raise UsageError(f"--random-weights builds its own full-size models: drop --models {models_spec}")
    if in_memory and (random_weights or models_spec not in (None, "", "default")):
        raise UsageError("--in-memory builds its own random models: drop --random-weights and --models")
    if as_released:
        chosen, notes = get_preset("full"), ["as released: whole projector every step, no caching, no offload"]
    else:
        chosen, notes = resolve_bench_preset(preset, device, width, height, quantization)
    built = None
    if in_memory:
        built = build_random_pipeline(configs, projector_config, device, dtype)
        models_label = "random full-size in memory" if configs is None else "random small in memory"
        sources = ModelSources(base=models_label, siglip=models_label, dinov2=models_label, adapter=models_label)
        models_dir = None
    elif random_weights:
        models_dir = ensure_random_models(random_dir)
        sources, models_label = ModelSources.from_models_dir(models_dir), "random full-size"
    else:
        sources, models_label = ModelSources.parse(models_spec), models_spec or "default"
    if base:
        sources = sources.with_base(str(base))
    if adapter:  # a trained adapter (``--adapter``) of the models' shape
        if in_memory:
            raise UsageError("--in-memory builds its own random models: drop --adapter")
        sources = sources.with_adapter(adapter)
    full_size = random_weights or models_label == "default" or (in_memory and configs is None)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    # the preset measured is the one resolved above (--quantization, the bench's auto notes, a preset asked for on
    # tiny models, which the engine would run full): given to the engine as a MemoryPreset, used as it is
    options = dict(sources=sources, device=device, dtype=dtype, speed=speed)
    if built is not None:
        engine = Engine.from_pipeline(built, models_label, chosen, loaded_as=f"models built in memory on {device}",
                                      **options)
    else:
        engine = Engine(str(models_dir) if random_weights else models_label, chosen, **options)
    built = None
    pipe = engine.load()
    if as_released:
        released_style(pipe)
    tokens_ahead = TokensAhead(pipe, device)
    _sync(device)
    load_s = time.perf_counter() - start
    gpu_load = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    character = bench_character()
    stamps: list[float] = []

    def on_step(fraction, message):  # the engine reports at the end of every denoising step
        _sync(device)
        stamps.append(time.perf_counter())

    def generate(n, report=None):
        request = GenerationRequest(BENCH_PROMPT, characters=[character], steps=n, width=width, height=height, seed=0,
                                    draft=draft)
        return engine.generate(request, report=report, pipeline_options={"output_type": output_type})

    output_type = "np"
    warmup_steps, warmup_s = min(2, steps), None
    if warmup:  # out of memory, here or timed: the engine's advice names the next preset
        _sync(device)
        start = time.perf_counter()
        generate(warmup_steps)
        _sync(device)
        warmup_s = time.perf_counter() - start
    pipe.clear_caches()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    generate(steps, on_step)
    _sync(device)
    image_s = time.perf_counter() - start
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    ahead_s = tokens_ahead.seconds()
    s_per_step = (statistics.median(intervals) + ahead_s / steps) if intervals else image_s / steps
    if latents_path is not None:
        from safetensors.torch import save_file

        output_type = "latent"
        latents = generate(steps).images[0]
        save_file({"latents": latents.detach().float().cpu().contiguous()}, str(latents_path))

    result = {
        "run": run or ("as-released" if as_released else chosen.name + ("" if engine.speed.off else
                                                                          f"+{engine.speed.name}")
                       + ("+draft" if draft else "")),
        "speed": engine.speed.name,
        "draft": draft,
        "preset": chosen.name,
        "as_released": as_released,
        "transformer_quantization": chosen.transformer_quantization,
        "offload": chosen.offload,
        "models": models_label,
        "base": Path(base).name if base else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "width": width, "height": height, "steps": steps,
        "load_s": round(load_s, 3),
        "s_per_step": round(s_per_step, 4),
        "tokens_ahead_s": round(ahead_s, 4),
        "s_per_image": round(image_s, 3),
        "s_per_image_at_28": round(image_s + (REFERENCE_STEPS - steps) * s_per_step, 3),
        "compile_s": (round(max(0.0, warmup_s - image_s * warmup_steps / steps), 3)
                      if warmup_s is not None else None),
        "gpu_peak_gib": round(torch.cuda.max_memory_allocated(device) / GiB, 3) if device.type == "cuda" else None,
        "gpu_peak_load_gib": round(gpu_load / GiB, 3) if gpu_load is not None else None,
        "ram_peak_gib": round(peak_ram_bytes() / GiB, 3) if peak_ram_bytes() is not None else None,
        "estimate_gpu_gib": None, "estimate_ram_gib": None,
        "applied": list(engine.steps),
        "notes": notes,
    }
    if full_size:
        e = estimate(chosen, width, height)
        result.update(estimate_gpu_gib=round(e.gpu_peak_gib, 2), estimate_ram_gib=round(e.ram_peak_gib, 2))
    pipe = None
    engine.unload()  # drop the models before another run in this process
    _free()
    if verbose:
        print(format_result(result))
    return result


# ------------------------------------------------------------------------------------------------ reporting
def _gib(value) -> str:
    return "-" if value is None else f"{value:.1f} GiB"


def format_result(r: dict) -> str:
    """One run's figures, a few lines of text."""
    head = f"bench {r['run']} on {r['device']} ({r['models']} models, {r['dtype']}, {r['width']}x{r['height']}, " \
           f"{r['steps']} steps)"
    lines = [head,
             f"  load time      {r['load_s']:.2f} s",
             f"  per step       {r['s_per_step']:.3f} s",
             f"  per image      {r['s_per_image']:.2f} s" +
             (f"  ({r['s_per_image_at_28']:.2f} s at {REFERENCE_STEPS} steps, extrapolated)"
              if r["steps"] != REFERENCE_STEPS else ""),
             f"  peak GPU       {_gib(r['gpu_peak_gib'])} generating, {_gib(r['gpu_peak_load_gib'])} loading"
             + (f"  (planner: {_gib(r['estimate_gpu_gib'])})" if r.get("estimate_gpu_gib") is not None else ""),
             f"  peak RAM       {_gib(r['ram_peak_gib'])}"
             + (f"  (planner: {_gib(r['estimate_ram_gib'])})" if r.get("estimate_ram_gib") is not None else "")]
    lines += [f"  note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)


RUN_ORDER = ("as-released", "eager", "compiled", "fp8", "draft", "full", "balanced", "low", "minimal")


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_markdown(results: list[dict]) -> str:
    """A markdown table of several runs (errors included), with the issue's goals checked."""
    ok = [r for r in results if "error" not in r]
    order = {name: i for i, name in enumerate(RUN_ORDER)}
    rows = sorted(results, key=lambda r: order.get(r.get("run"), len(order)))
    first = ok[0] if ok else {}
    steps = first.get("steps")
    lines = []
    if first:
        lines.append(f"Device: {first['device']}, torch {first['torch']}, {first['models']} models, {first['dtype']}, "
                     f"{first['width']}x{first['height']}, {steps} steps timed after a 2-step warm-up; caches cleared "
                     "before the timed image.")
        if steps != REFERENCE_STEPS:
            lines.append(f"s/image at {REFERENCE_STEPS} steps is extrapolated: measured s/image + "
                         f"({REFERENCE_STEPS} - {steps}) x s/step.")
        lines.append("")
    lines += [("| run | transformer | offload | load s | s/step | s/image | s/image @28 | GPU peak | planner GPU "
               "| RAM peak | planner RAM | notes |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('run', '?')} | | | | | | | | | | | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['run']} | {r['transformer_quantization'] or r['dtype']} | {r['offload']} | {r['load_s']:.1f} "
            f"| {r['s_per_step']:.3f} | {r['s_per_image']:.2f} | {r['s_per_image_at_28']:.2f} "
            f"| {_cell(r['gpu_peak_gib'], '.1f')} | {_cell(r['estimate_gpu_gib'], '.1f')} "
            f"| {_cell(r['ram_peak_gib'], '.1f')} | {_cell(r['estimate_ram_gib'], '.1f')} "
            f"| {'; '.join(r.get('notes', []))} |")
    by_run = {r["run"]: r for r in ok}
    goals = []
    if "full" in by_run and "as-released" in by_run:
        ratio = by_run["full"]["s_per_step"] / by_run["as-released"]["s_per_step"]
        goals.append(f"full / as released, s/step: {ratio:.3f} (goal <= 0.95: {'met' if ratio <= 0.95 else 'missed'})")
    for run, limit in (("low", 16), ("minimal", 10)):
        if run in by_run and by_run[run]["gpu_peak_gib"] is not None:
            peak = by_run[run]["gpu_peak_gib"]
            goals.append(f"{run} GPU peak {peak:.1f} GiB (goal <= {limit}: {'met' if peak <= limit else 'missed'})")
    if goals:
        lines += ["", "Goals: " + "; ".join(goals) + "."]
    lines.append("")
    lines.append("GPU peak: torch.cuda.max_memory_allocated while generating (GiB); RAM peak: process max RSS, "
                 "loading included; load s: the engine's load, from_pretrained + apply_preset (files in the page "
                 "cache).")
    return "\n".join(lines)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; unreadable lines are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if line.strip():
                records.append(json.loads(line))
    return records
