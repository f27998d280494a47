"""Apply a ``MemoryPreset`` to a pipeline with the libraries' own APIs.

Quantization goes through the backends of :mod:`core.loading.quantization`: those that quantize while loading
(bitsandbytes) take ``quantization_config_for(preset)`` as ``from_pretrained``'s ``quantization_config``; everything
else happens after loading, in ``apply_preset``: the after-loading backends (optimum-quanto, fp8 layerwise casting)
on the transformer, T5 and the adapter, diffusers/accelerate offloading (``enable_model_cpu_offload``,
``apply_group_offloading`` with a CUDA stream when there is one) and VAE tiling.

The pipeline is any diffusers pipeline with FLUX's component names (``transformer``, ``text_encoder``,
``text_encoder_2``, ``vae``); the adapter is found as the transformer's attention processors that are
``nn.Module``s (:func:`adapter_processor_names`) plus any component named in ``ADAPTER_COMPONENTS``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from core.loading.memory import (ENCODERS, GROUP_OFFLOAD_MIN_BYTES, QUANTO_ALTERNATIVE, VAE_TILE_PX, MemoryPreset,
                                 group_low_cpu_mem_usage, get_preset)
from core.loading.quantization import loaded_quantization, pipeline_quantization_config, quantization_backend
from core.errors import UserError

logger = logging.getLogger(__name__)

ADAPTER_COMPONENTS = ("projector", "image_proj", "character_projector")


class PresetUnavailableError(UserError, RuntimeError):
    """The preset needs something this machine lacks; the message names the alternative to use."""


def check_preset_supported(preset: MemoryPreset, device: str | torch.device | None = None) -> None:
    """Raise ``PresetUnavailableError`` when ``preset`` quantizes with a backend that cannot run here (bitsandbytes
    needs the package and a CUDA device); the alternative is the same preset with ``quanto-int8``
    (``get_preset(name, quantization="quanto-int8")``), which also runs on CPU and MPS.
    """
    device_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    why = next((reason for q in (preset.transformer_quantization, preset.text_encoder_quantization)
                if q is not None and (reason := quantization_backend(q).unavailable(device_type))), None)
    if why is None:
        return
    raise PresetUnavailableError(
        f"preset '{preset.name}' quantizes with {preset.transformer_quantization} but {why}; use the quanto "
        f"alternative: preset '{preset.name}' with quantization '{QUANTO_ALTERNATIVE}' (runs on CPU, MPS and CUDA)")


def quantization_config_for(preset: MemoryPreset | str, device: str | torch.device | None = None):
    """The ``quantization_config`` to load a pipeline with for ``preset``, or None when nothing quantizes at load.

    Returns a diffusers ``PipelineQuantizationConfig`` mapping ``transformer`` (diffusers' BitsAndBytesConfig) and
    ``text_encoder_2`` (transformers' BitsAndBytesConfig) for bitsandbytes presets; quanto presets quantize after
    loading (``apply_preset``), so they return None. Raises ``PresetUnavailableError`` when bitsandbytes can't run.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    check_preset_supported(preset, device)
    return pipeline_quantization_config({"transformer": preset.transformer_quantization,
                                         "text_encoder_2": preset.text_encoder_quantization},
                                        getattr(torch, preset.dtype))


def adapter_processor_names(transformer: torch.nn.Module) -> list[str]:
    """Names of the adapter's attention processors inside ``transformer``: the ``*.processor`` submodules holding
    ``nn.Linear`` layers (FLUX's own processors hold none). Quantizing the base model leaves these out."""
    return [name for name, m in transformer.named_modules()
            if name.endswith(".processor") and any(isinstance(c, torch.nn.Linear) for c in m.modules())]


def _quantize_component(module: torch.nn.Module, name: str, quant: str, exclude: list[str]) -> str:
    """Quantize one loaded component after loading (quanto or fp8 casting); returns the step's line."""
    method = loaded_quantization(module)
    if method is not None:
        return f"{name} kept as loaded ({method})"
    backend = quantization_backend(quant)
    backend.apply(module, exclude=exclude)
    return backend.applied(name)


def _adapter_components(pipe) -> list[tuple[str, torch.nn.Module]]:
    return [(n, getattr(pipe, n)) for n in ADAPTER_COMPONENTS if isinstance(getattr(pipe, n, None), torch.nn.Module)]


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def apply_offload(pipe, mode: str, device: str | torch.device, use_stream: bool | None = None,
                  group_min_bytes: int = GROUP_OFFLOAD_MIN_BYTES, low_cpu_mem_usage: bool = False,
                  disk_path: str | None = None, disk_components: tuple[str, ...] = ()) -> list[str]:
    """Offload ``pipe``'s models: ``none`` (move all to ``device``), ``model`` or ``group``.

    ``model``: accelerate hooks via ``pipe.enable_model_cpu_offload`` (one whole model on the device at a time).
    ``group``: ``diffusers.hooks.apply_group_offloading``: the transformer block by block, other models over
    ``group_min_bytes`` (1 GiB) leaf by leaf, smaller ones moved to ``device``; ``use_stream`` (default: when
    ``device`` is CUDA) prefetches the next group on a CUDA stream; ``low_cpu_mem_usage`` pins on the fly (no
    pinned second copy in RAM). ``disk``: the same, each group written to ``disk_path`` (default: a fresh folder
    in the user cache, removed at exit) and read back when it runs; under ``group``, only the models named in
    ``disk_components`` go to disk. Returns the steps taken, one line each.
    """
    device = torch.device(device)
    if mode == "none":
        pipe.to(device)
        return [f"all models on {device}"]
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
        return [f"model CPU offload to {device}"]
    if mode not in ("group", "disk"):
        raise ValueError(f"offload mode {mode!r} unknown; expected none, model, group or disk")
    if disk_path is None and (mode == "disk" or disk_components):
        disk_path = offload_folder()
    from diffusers.hooks import apply_group_offloading

    stream = device.type == "cuda" if use_stream is None else use_stream
    steps = []
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        if _module_bytes(component) < group_min_bytes:
            component.to(device)
            steps.append(f"{name} on {device}")
            continue
        kind = "block_level" if name == "transformer" else "leaf_level"
        to_disk = disk_path is not None and (mode == "disk" or name in disk_components)
        if to_disk:
            untie_weights(component)
        apply_group_offloading(component, onload_device=device, offload_device=torch.device("cpu"),
                               offload_type=kind, num_blocks_per_group=1 if kind == "block_level" else None,
                               use_stream=stream, low_cpu_mem_usage=low_cpu_mem_usage,
                               offload_to_disk_path=str(Path(disk_path) / name) if to_disk else None)
        where = f", on disk in {disk_path}" if to_disk else ""
        steps.append(f"{name} group offload ({kind}{', stream' if stream else ''}{where})")
    return steps


def untie_weights(module: torch.nn.Module) -> int:
    """Give each second registration of a parameter (T5's ``encoder.embed_tokens`` tied to ``shared``) its own
    ``Parameter`` over the same storage; returns how many. diffusers' disk offload otherwise writes a tied tensor
    after another group has emptied it (wrong prompt embeddings, seen on the tiny T5). Values are unchanged."""
    seen, untied = set(), 0
    for _, owner in module.named_modules(remove_duplicate=False):
        for name, param in list(owner.named_parameters(recurse=False)):
            if id(param) in seen:
                setattr(owner, name, torch.nn.Parameter(param.data, requires_grad=param.requires_grad))
                untied += 1
            else:
                seen.add(id(param))
    return untied


def offload_folder() -> str:
    """A fresh folder in the user cache for disk offloading, removed when the process ends.

    Fresh each load: diffusers reuses a group file that exists, so a folder shared between models would serve
    another model's weights. Folders left by a killed process are removed at the next load.
    """
    import atexit
    import os
    import shutil
    import tempfile

    from core.io.paths import cache_dir

    root = cache_dir("offload")
    for old in root.glob("run-*"):
        try:
            pid = int(old.name.split("-")[1])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass
    folder = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def enable_vae_tiling(vae, tile_px: int = VAE_TILE_PX) -> None:
    """Decode in ``tile_px`` tiles. FLUX's VAE (sample_size 1024) would otherwise only tile above 1024 px."""
    vae.enable_tiling()
    if vae.tile_sample_min_size > tile_px:
        vae.tile_sample_min_size = tile_px
        vae.tile_latent_min_size = tile_px // 2 ** (len(vae.config.block_out_channels) - 1)


def apply_preset(pipe, preset: MemoryPreset | str, device: str | torch.device) -> list[str]:
    """Apply ``preset`` to a loaded pipeline for ``device``; returns the steps taken, one line each.

    bitsandbytes presets must have been loaded with ``quantization_config_for(preset)`` (checked). Quanto
    quantization and fp8 layerwise casting of the transformer/T5 and the adapter are applied here; a transformer
    loaded quantized (a GGUF file) is kept as it is. On a CPU device nothing is offloaded (there is nowhere to
    offload to).
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    device = torch.device(device)
    check_preset_supported(preset, device)
    steps: list[str] = []
    transformer = getattr(pipe, "transformer", None)
    adapter_in_transformer = adapter_processor_names(transformer) if transformer is not None else []

    for name, quant in (("transformer", preset.transformer_quantization),
                        ("text_encoder_2", preset.text_encoder_quantization)):
        module = getattr(pipe, name, None)
        if module is None or quant is None:
            continue
        backend = quantization_backend(quant)
        if backend.at_load:
            if not backend.loaded_quantized(module):
                raise ValueError(f"preset '{preset.name}' needs {name} loaded in {quant}: load the pipeline with "
                                 "quantization_config=quantization_config_for(preset)")
            steps.append(f"{name} in {quant} (loaded)")
            continue
        exclude = adapter_in_transformer if name == "transformer" else []
        steps.append(_quantize_component(module, name, quant, exclude))

    if preset.adapter_quantization:
        steps += quantization_backend(preset.adapter_quantization).apply_to_adapter(
            transformer, adapter_in_transformer, _adapter_components(pipe))

    steps += apply_offload(pipe, "none" if device.type == "cpu" else preset.offload, device,
                           low_cpu_mem_usage=group_low_cpu_mem_usage(preset),
                           disk_components=ENCODERS if preset.disk_cache else ())

    if preset.vae_tiling and getattr(pipe, "vae", None) is not None:
        enable_vae_tiling(pipe.vae)
        steps.append(f"VAE tiling ({VAE_TILE_PX} px tiles)")
    logger.info("preset %s: %s", preset.name, "; ".join(steps))
    return steps


def attach_controlnet(pipe, controlnet, preset: MemoryPreset | str, device: str | torch.device) -> list[str]:
    """Adds a ControlNet to a loaded pipeline under ``preset``: stored as the transformer is (fp8 layerwise casting
    or quanto; a bitsandbytes preset's quanto alternative, as the net is loaded unquantized) and offloaded as the
    rest (model offload is set up again over every model; group offload groups the net leaf by leaf). Returns the
    steps taken, one line each."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    device = torch.device(device)
    steps = []
    quant = preset.transformer_quantization
    if quant is not None and quantization_backend(quant).at_load:
        quant = QUANTO_ALTERNATIVE  # bitsandbytes quantizes while loading, and the net is loaded already
    if quant is not None:
        steps.append(_quantize_component(controlnet, "controlnet", quant, []))
    pipe.load_controlnet(controlnet)
    offload = "none" if device.type == "cpu" else preset.offload
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)  # removes the old hooks, chains every model again
        steps.append(f"model CPU offload to {device}, ControlNet included")
    elif offload in ("group", "disk") and _module_bytes(controlnet) >= GROUP_OFFLOAD_MIN_BYTES:
        from diffusers.hooks import apply_group_offloading

        to_disk = offload == "disk"
        apply_group_offloading(controlnet, onload_device=device, offload_device=torch.device("cpu"),
                               offload_type="leaf_level", use_stream=device.type == "cuda",
                               low_cpu_mem_usage=group_low_cpu_mem_usage(preset),
                               offload_to_disk_path=str(Path(offload_folder()) / "controlnet") if to_disk else None)
        steps.append(f"controlnet group offload (leaf_level{', on disk' if to_disk else ''})")
    else:
        controlnet.to(device)
        steps.append(f"controlnet on {device}")
    return steps


def resolve_preset(name: str, *, tiny: bool = False, zero_gpu: bool = False,
                   device: str | torch.device | None = None, width: int = 1024, height: int = 1024,
                   sources=None):
    """``(MemoryPreset, reason)`` for a preset name as the user gave it.

    ``auto`` asks the planner with the detected memory (and, with ``sources`` (or a callable giving them) holding a
    single-file transformer, that file's real size); a bitsandbytes preset falls back to its quanto alternative
    where bitsandbytes cannot run; tiny test models and ZeroGPU (a large GPU per request) always run ``full``.
    """
    from core.loading.memory import choose_preset, detect_memory

    if zero_gpu:
        return get_preset("full"), "ZeroGPU: a large GPU is attached for each request"
    if tiny:
        return get_preset("full"), "tiny test models: a few megabytes, no memory saving needed"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bnb_ok = quantization_backend("bnb-nf4").unavailable(device.type) is None
    if name == "auto" and device.type == "cpu":
        return get_preset("full"), "no CUDA GPU: everything stays in system memory (slow; try --models tiny)"
    if name == "auto":
        mem = detect_memory()
        files = None
        try:  # ``sources`` may be a callable (the engine's, parsed on first use); a bad one fails at load
            found = sources() if callable(sources) else sources
            if found is not None and found.part_files():
                from core.loading.component_files import weight_files

                files = weight_files(found.part_files())
        except UserError:
            files = None
        preset, _, reason = choose_preset(mem.vram_total_bytes, mem.ram_total_bytes, width, height,
                                          bitsandbytes_ok=bnb_ok, files=files)
        return preset, reason
    preset = get_preset(name)
    if preset.needs_bitsandbytes and not bnb_ok:
        return preset.with_quantization(QUANTO_ALTERNATIVE), "bitsandbytes needs a CUDA GPU: using quanto int8"
    return preset, "chosen by the user"
