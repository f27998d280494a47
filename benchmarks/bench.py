"""Speed and memory of one generation: load time, seconds per step and per image, peak GPU memory and RAM.

:func:`run_bench` loads a models directory through the engine (:class:`core.engine.Engine`: the studio's own
path, ``from_pretrained`` with the preset's ``quantization_config``, then ``apply_preset``), makes one warm-up image
and one timed image of a synthetic character with ``Engine.generate``, and returns the figures. With
``random_weights`` the models directory is a full-size FLUX.1-dev + SigLIP + DINOv2 + adapter with random weights,
built once from the bundled configs (:func:`benchmarks.random_models.ensure_random_models`, about 42 GB on disk)
so that anyone with a GPU can measure without a download.

``as_released`` measures the released code's way of running (:mod:`benchmarks.released`), bf16, no offload. The
figures are printed by :mod:`benchmarks.report`.

Units: seconds, GiB (2**30 bytes).
"""

from __future__ import annotations

import itertools
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.random_models import build_random_pipeline, ensure_random_models, free
from benchmarks.released import released_style
from benchmarks.report import REFERENCE_STEPS, format_result
from core.engine import Engine
from core.errors import UsageError
from core.loading.quantization import quantization_backend

GiB = 2**30
BENCH_PROMPT = "a character standing in a sunny park, detailed illustration"


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
        self._make = pipe.character_tokens  # the pipeline's documented hook, as ReleasedStylePipeline overrides

        def remember(*args, **kwargs):
            self._last = (args, kwargs)
            return self._make(*args, **kwargs)

        pipe.character_tokens = remember

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
    from core.loading.memory import QUANTO_ALTERNATIVE, choose_preset, detect_memory, get_preset

    notes = []
    if preset == "auto":
        found = detect_memory()
        chosen, _, reason = choose_preset(found.vram_total_bytes, found.ram_total_bytes, width, height,
                                          bitsandbytes_ok=quantization_backend("bnb-nf4").unavailable("cuda") is None)
        notes.append(f"auto: {reason}")
        chosen = get_preset(chosen.name, quantization) if quantization else chosen
    else:
        chosen = get_preset(preset, quantization)
    if chosen.needs_bitsandbytes and quantization_backend("bnb-nf4").unavailable(device.type):
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
    free()
    if verbose:
        print(format_result(result))
    return result
