"""Load the engine's pipeline under a memory preset: ``load_pipeline``.

Before loading, on a GPU, a load the free RAM and swap cannot hold is refused (``check_ram_before_loading``);
bitsandbytes quantizes while loading (the preset's ``quantization_config``), then ``apply_preset`` quantizes the
rest and offloads (:mod:`core.loading.presets`); the disk-backed prompt/feature caches of the disk presets are
installed last (``install_disk_caches``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.loading.memory import MemoryPreset
from core.loading.presets import apply_preset, quantization_config_for


def source_facts(sources):
    """``(sizes, files)`` for the planner from the sources as given: local folders' configs (else the bundled
    full-size ones) and a single-file transformer's header (its real size)."""
    from core.loading.memory import WeightFiles
    from core.loading.model_sizes import all_sizes
    from core.loading.component_files import weight_files
    from core.loading.sources import is_local

    def local(spec):
        return spec if spec and is_local(spec) and Path(spec).is_dir() else None

    files = weight_files(sources.part_files()) if sources.part_files() else WeightFiles()
    sizes = all_sizes(local(sources.base), local(sources.siglip), local(sources.dinov2))
    return sizes, files


def check_ram_before_loading(sources, preset: MemoryPreset, width: int = 1024, height: int = 1024,
                             available_bytes: int | None = None):
    """Refuse (``RamBudgetError``, with the figures) a load the available RAM and swap cannot hold; returns the
    estimate. ``available_bytes`` default: the detected free RAM plus free swap (no check when unknown)."""
    from core.loading.memory import check_ram_budget, detect_memory, estimate, swap_free_bytes

    sizes, files = source_facts(sources)
    e = estimate(preset, width, height, sizes=sizes, files=files)
    if available_bytes is None:
        found = detect_memory().ram_available_bytes
        if found is None:
            return e
        available_bytes = found + swap_free_bytes()
    check_ram_budget(e, available_bytes, files=files, sizes=sizes)
    return e


def _weights_stamp(folder) -> str:
    """Sizes and modification times of a local model folder's weight files (a changed model, new namespace)."""
    if folder is not None and Path(folder).is_file():  # a single-file part (ae.safetensors, t5xxl_fp8...)
        return f"{folder}:{Path(folder).stat().st_size}:{Path(folder).stat().st_mtime_ns}"
    if folder is None or not Path(folder).is_dir():
        return str(folder)
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix in (".safetensors", ".bin", ".gguf"))
    return ";".join(f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def install_disk_caches(pipe, sources, preset: MemoryPreset, folder=None) -> list[str]:
    """Replace the pipeline's prompt-embedding and character-feature caches with disk-backed ones of the same
    interface (:class:`core.io.cache.DiskBackedCache`), so T5/CLIP and SigLIP/DINOv2 run once per prompt and per
    character image across restarts and story resumes. Their namespaces hold what the values depend on: the
    encoders' sources and weight files, the dtype and the preset's T5 storage. Returns the steps taken."""
    import hashlib

    from core.io.cache import DiskBackedCache
    from core.io.paths import cache_dir
    from core.models.encoders import CharacterFeatures

    def namespace(*parts) -> str:
        return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:16]

    base = sources.base if Path(str(sources.base)).is_dir() else None
    dtype = str(getattr(pipe.transformer, "dtype", ""))
    files = sources.part_files()  # text encoders given as files replace the base's (their stamps instead)
    prompts = namespace("prompts", sources.base,
                        _weights_stamp(files.get("text_encoder") or base and Path(base) / "text_encoder"),
                        _weights_stamp(files.get("text_encoder_2") or base and Path(base) / "text_encoder_2"), dtype,
                        preset.text_encoder_quantization)
    features = namespace("features", sources.siglip, sources.dinov2, _weights_stamp(sources.siglip),
                         _weights_stamp(sources.dinov2), dtype)
    root = Path(folder) if folder is not None else cache_dir("embeddings")
    pipe.use_caches(
        prompt_cache=DiskBackedCache(
            pipe.PROMPT_CACHE_SIZE, root / prompts, namespace=prompts,
            pack=lambda v: {"embeds": v[0], "pooled": v[1], "text_ids": v[2]},
            unpack=lambda d: tuple(d[k].to(pipe._execution_device) for k in ("embeds", "pooled", "text_ids"))),
        feature_cache=DiskBackedCache(
            pipe.FEATURE_CACHE_SIZE, root / features, namespace=features,
            pack=lambda v: {"low_res_deep": v.low_res_deep, "low_res_shallow": v.low_res_shallow,
                            "high_res_deep": v.high_res_deep},
            unpack=lambda d: CharacterFeatures(**d)))  # on the CPU: the pipeline moves features where it uses them
    return [f"prompt embeddings and character features kept on disk in {root}"]


def preset_dtype(preset: MemoryPreset, device: str | torch.device) -> torch.dtype:
    """The preset's weight dtype on a GPU; float32 on the CPU, where bfloat16 matmuls are very slow."""
    return getattr(torch, preset.dtype) if torch.device(device).type == "cuda" else torch.float32


def load_pipeline(sources, preset: MemoryPreset, device: str | torch.device, dtype: torch.dtype | None = None,
                  text_adapter=None, progress: bool = False):
    """Loads the engine under a memory preset: ``(pipe, steps)``, ``steps`` saying what was applied.

    Quantization happens at load time, offloading after; running out of memory raises
    :class:`core.loading.memory.MemoryAdviceError` naming the next preset to try. On a GPU, a load the free RAM
    and swap cannot hold is refused first (:class:`core.loading.memory.RamBudgetError`).
    """
    from core.loading.memory import out_of_memory_advice
    from core.models.pipeline import InstantCharacterPipeline

    if torch.device(device).type == "cuda":  # the planner models GPU presets; on the CPU all of it is in RAM
        check_ram_before_loading(sources, preset)
    kwargs = {}
    config = quantization_config_for(preset, device)
    if config is not None:
        kwargs["quantization_config"] = config
    with out_of_memory_advice(preset):
        pipe = InstantCharacterPipeline.from_pretrained(sources, dtype=dtype or preset_dtype(preset, device),
                                                        text_adapter=text_adapter, progress=progress, **kwargs)
        steps = apply_preset(pipe, preset, device)
    if preset.disk_cache and getattr(pipe, "character_encoder", None) is not None:
        steps += install_disk_caches(pipe, sources, preset)
    if not progress:
        pipe.set_progress_bar_config(disable=True)
    return pipe, steps
