"""FLUX transformers held as one file: BFL-format ``.safetensors`` (bf16 or fp8) and ``.gguf`` (Q4 ... Q8).

These are the files people already have (BFL's ``flux1-dev.safetensors``, fp8 single files, city96's GGUFs for
ComfyUI and Forge). Only the transformer comes from the file; FLUX's VAE, text encoders, tokenizers and scheduler
still come from a diffusers folder or hub id. Loading is diffusers' ``FluxTransformer2DModel.from_single_file``
(with ``GGUFQuantizationConfig`` for GGUF, whose weights stay quantized and are dequantized layer by layer) and a
config that is read locally, never downloaded: the base folder's ``transformer/config.json`` when it has one, else
the bundled FLUX.1-dev config (``assets/configs/flux1-dev-transformer.json``).

:func:`inspect_transformer_file` reads only a file's header (tensor names, dtypes, byte sizes), so the planner knows
a file's real size and a wrong or corrupt file is named before anything loads. :func:`write_transformer_file`
writes a diffusers transformer in the BFL key layout (``double_blocks.0.img_attn.qkv.weight``), as safetensors or
GGUF: the tests and the GPU script build their files with it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from core.loading.memory import WeightFiles
from core.loading.model_sizes import CONFIG_DIR
from core.errors import ModelSourceError

SINGLE_FILE_SUFFIXES = (".safetensors", ".gguf")
# A key present in every FLUX.1 transformer file, per layout (BFL files may carry ComfyUI's prefix).
BFL_KEY = "double_blocks.0.img_attn.qkv.weight"
DIFFUSERS_KEY = "transformer_blocks.0.attn.to_q.weight"
BFL_PREFIXES = ("", "model.diffusion_model.")
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                      "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


class SingleFileError(ModelSourceError):
    """A transformer file that is not a FLUX.1 checkpoint this studio can load; the message names the file."""


@dataclass(frozen=True)
class TransformerFile:
    """What a single transformer file holds, from its header alone.

    Attributes:
        path: the file.
        format: ``safetensors`` or ``gguf``.
        layout: ``bfl`` (BFL / ComfyUI keys) or ``diffusers``.
        tensor_bytes: bytes of all its tensors as stored (quantized for GGUF, fp8 or bf16 for safetensors).
        dtypes: the stored dtypes or GGUF quantization types, e.g. ``{"Q8_0", "F32"}`` or ``{"BF16"}``.
        file_bytes: the file's size on disk.
        prefix: the transformer's key prefix in an all-in-one checkpoint (``model.diffusion_model.``, with
            other parts beside it; its ``tensor_bytes`` count the transformer's tensors only), else ``""``.
    """

    path: str
    format: str
    layout: str
    tensor_bytes: int
    dtypes: frozenset[str]
    file_bytes: int
    prefix: str = ""

    @property
    def quantized(self) -> bool:
        """True for a GGUF file with quantized tensors (kept quantized when loaded)."""
        return self.format == "gguf" and any(d not in ("F32", "F16", "BF16") for d in self.dtypes)

    def weight_files(self) -> WeightFiles:
        """The planner's view: a GGUF's quantized bytes as held; the file as the largest one mapped at once."""
        return WeightFiles(transformer_bytes=self.tensor_bytes if self.format == "gguf" else None,
                           largest_file_bytes=self.tensor_bytes if self.prefix else self.file_bytes,
                           transformer_file=os.path.basename(self.path))


def is_transformer_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in SINGLE_FILE_SUFFIXES


def _layout(path: Path, names) -> str:
    names = set(names)
    if any(p + BFL_KEY in names for p in BFL_PREFIXES):
        return "bfl"
    if DIFFUSERS_KEY in names:
        return "diffusers"
    raise SingleFileError(f"{path} is not a FLUX.1 transformer: it has no {BFL_KEY} (BFL layout) or "
                          f"{DIFFUSERS_KEY} (diffusers layout) tensor")


def safetensors_header(path: Path) -> dict:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SingleFileError(f"{path} is not a safetensors file: {size} bytes, too short for a header")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise SingleFileError(f"{path} is not a valid safetensors file (header length {length:,} bytes in a "
                                  f"{size:,}-byte file): corrupt or not safetensors")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SingleFileError(f"{path} is not a valid safetensors file: its header is not JSON") from None
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + length + end > size:
        raise SingleFileError(f"{path} is truncated: its tensors need {8 + length + end:,} bytes, the file has "
                              f"{size:,} (an unfinished download?)")
    return header


def inspect_transformer_file(path: str | os.PathLike) -> TransformerFile:
    """Read a transformer file's header; raises :class:`SingleFileError` naming the file when it is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SingleFileError(f"transformer file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        header = safetensors_header(path)
        layout = _layout(path, header)
        prefix = "model.diffusion_model."
        if layout == "bfl" and prefix + BFL_KEY in header and not all(k.startswith(prefix) for k in header):
            header = {k: v for k, v in header.items() if k.startswith(prefix)}  # the other parts are not its size
        else:
            prefix = ""
        dtypes = frozenset(v["dtype"] for v in header.values())
        nbytes = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
        return TransformerFile(str(path), "safetensors", layout, nbytes, dtypes, path.stat().st_size, prefix)
    if suffix == ".gguf":
        from gguf import GGUFReader

        try:
            reader = GGUFReader(path)
        except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, struct.error, IndexError... on bad files
            raise SingleFileError(f"{path} is not a valid GGUF file ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
        layout = _layout(path, (t.name for t in reader.tensors))
        dtypes = frozenset(t.tensor_type.name for t in reader.tensors)
        nbytes = sum(int(t.n_bytes) for t in reader.tensors)
        return TransformerFile(str(path), "gguf", layout, nbytes, dtypes, path.stat().st_size)
    raise SingleFileError(f"{path}: a transformer file must be .safetensors or .gguf")


def transformer_config_dir(base_folder: str | os.PathLike | None) -> tuple[str, str]:
    """``(config, subfolder)`` for ``from_single_file``: the base folder's ``transformer/config.json`` when it has
    one, else the bundled FLUX.1-dev config (copied once to the user cache, as diffusers reads a folder)."""
    if base_folder is not None and (Path(base_folder) / "transformer" / "config.json").is_file():
        return str(base_folder), "transformer"
    from core.io.paths import atomic_path, cache_dir

    bundled = (CONFIG_DIR / "flux1-dev-transformer.json").read_text()
    folder = cache_dir("configs", "flux1-dev", "transformer")
    target = folder / "config.json"
    if not target.is_file() or target.read_text() != bundled:
        with atomic_path(target) as tmp:
            Path(tmp).write_text(bundled)
    return str(folder.parent), "transformer"


def bfl_to_diffusers(checkpoint: dict) -> dict:
    """BFL-layout tensors (optionally ``model.diffusion_model.``-prefixed) under diffusers' key names.

    The inverse of :func:`_bfl_state_dict`. Unlike diffusers' own converter (which assumes FLUX.1's width 3072)
    the widths are read from the tensors, so scaled-down test files convert too. Works on GGUF's quantized
    tensors: fused q/k/v are split along output rows, which quantization blocks never cross.
    """
    import torch

    sd = {k.removeprefix("model.diffusion_model."): v for k, v in checkpoint.items()}
    out = {}
    inner = sd["img_in.weight"].shape[0]

    def take(ours, bfl, splits=None):
        for suffix in ("weight", "bias"):
            tensor = sd.pop(f"{bfl}.{suffix}", None)
            if tensor is None:
                continue
            names = [ours] if splits is None else ours
            parts = [tensor] if splits is None else torch.split(tensor, splits(tensor), dim=0)
            for name, part in zip(names, parts):
                out[f"{name}.{suffix}"] = part

    take("x_embedder", "img_in")
    take("context_embedder", "txt_in")
    for bfl, ours in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                      ("guidance_in", "guidance_embedder")):
        take(f"time_text_embed.{ours}.linear_1", f"{bfl}.in_layer")
        take(f"time_text_embed.{ours}.linear_2", f"{bfl}.out_layer")
    doubles = sorted({int(k.split(".")[1]) for k in sd if k.startswith("double_blocks.")})
    singles = sorted({int(k.split(".")[1]) for k in sd if k.startswith("single_blocks.")})
    thirds = lambda t: [inner] * 3  # noqa: E731
    for i in doubles:
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        take(f"{d}.norm1.linear", f"{b}.img_mod.lin")
        take(f"{d}.norm1_context.linear", f"{b}.txt_mod.lin")
        take([f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], f"{b}.img_attn.qkv", thirds)
        take([f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"], f"{b}.txt_attn.qkv", thirds)
        for ours, bfl in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                          ("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")):
            out[f"{d}.attn.{ours}.weight"] = sd.pop(f"{b}.{bfl}.scale")
        take(f"{d}.attn.to_out.0", f"{b}.img_attn.proj")
        take(f"{d}.attn.to_add_out", f"{b}.txt_attn.proj")
        take(f"{d}.ff.net.0.proj", f"{b}.img_mlp.0")
        take(f"{d}.ff.net.2", f"{b}.img_mlp.2")
        take(f"{d}.ff_context.net.0.proj", f"{b}.txt_mlp.0")
        take(f"{d}.ff_context.net.2", f"{b}.txt_mlp.2")
    for i in singles:
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        take(f"{d}.norm.linear", f"{b}.modulation.lin")
        take([f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"], f"{b}.linear1",
             lambda t: [inner] * 3 + [t.shape[0] - 3 * inner])
        take(f"{d}.proj_out", f"{b}.linear2")
        out[f"{d}.attn.norm_q.weight"] = sd.pop(f"{b}.norm.query_norm.scale")
        out[f"{d}.attn.norm_k.weight"] = sd.pop(f"{b}.norm.key_norm.scale")
    take("proj_out", "final_layer.linear")
    for suffix in ("weight", "bias"):  # BFL's (shift, scale) -> diffusers' (scale, shift)
        shift, scale = sd.pop(f"final_layer.adaLN_modulation.1.{suffix}").chunk(2, dim=0)
        out[f"norm_out.linear.{suffix}"] = torch.cat([scale, shift], dim=0)
    if sd:
        raise KeyError(f"unexpected tensors for a FLUX.1 transformer: {', '.join(sorted(sd)[:3])}")
    return out


def gguf_checkpoint(path: str | os.PathLike) -> dict:
    """A GGUF file's tensors, memory-mapped (no copy): quantized ones as diffusers' ``GGUFParameter``.

    diffusers' own reader copies every tensor out of the mapping, so for a moment the file sits in RAM twice; here
    the weights stay file pages (the kernel may drop them under pressure) until they are moved to the GPU or run.
    The mapping is read-only: inference never writes weights in place.
    """
    import warnings

    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    out = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for tensor in gguf.GGUFReader(path).tensors:
            if tensor.tensor_type not in plain and tensor.tensor_type not in SUPPORTED_GGUF_QUANT_TYPES:
                raise SingleFileError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}, a GGUF type "
                                      "diffusers cannot dequantize")
            weights = torch.from_numpy(tensor.data)
            out[tensor.name] = weights if tensor.tensor_type in plain else GGUFParameter(
                weights, quant_type=tensor.tensor_type)
    return out


def load_transformer_file(path: str | os.PathLike, dtype, base_folder: str | os.PathLike | None = None,
                          quantization_config=None):
    """A ``FluxTransformer2DModel`` from a single file, in ``dtype`` (GGUF: kept quantized, computing in ``dtype``).

    The file is read memory-mapped (diffusers' ``load_single_file_checkpoint``), a BFL layout renamed by
    :func:`bfl_to_diffusers`, and the model built by ``from_single_file`` under the local config.
    ``quantization_config`` (e.g. bitsandbytes for a bf16 file) is passed on; for a GGUF file it is
    ``GGUFQuantizationConfig(compute_dtype=dtype)``. Errors are :class:`SingleFileError` naming the file.
    """
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    info = inspect_transformer_file(path)
    config, subfolder = transformer_config_dir(base_folder)
    kwargs = {}
    if info.format == "gguf":
        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    elif quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        if info.format == "gguf":
            checkpoint = gguf_checkpoint(info.path)
        elif info.prefix:  # an all-in-one checkpoint: only the transformer's tensors are read (memory-mapped)
            from safetensors import safe_open

            with safe_open(info.path, framework="pt") as f:
                checkpoint = {k: f.get_tensor(k) for k in f.keys() if k.startswith(info.prefix)}
        else:
            checkpoint = load_single_file_checkpoint(info.path, local_files_only=True)
        if info.layout == "bfl":
            checkpoint = bfl_to_diffusers(checkpoint)
        return FluxTransformer2DModel.from_single_file(checkpoint, config=config, subfolder=subfolder,
                                                       torch_dtype=dtype, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SingleFileError(f"cannot load the FLUX transformer from {info.path} with the config in "
                              f"{Path(config) / subfolder}: {first[:300]}") from None


def find_transformer_file(flux_folder: str | os.PathLike) -> str | None:
    """The one ``.safetensors`` / ``.gguf`` file directly inside a models directory's ``flux/`` folder, if any.

    A diffusers pipeline folder keeps its weights in sub-folders, so a file at its top level is a single-file
    transformer put there by the user. Two such files are ambiguous (an error naming both).
    """
    folder = Path(flux_folder)
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if p.is_file() and is_transformer_file(p))
    if len(found) > 1:
        raise SingleFileError(f"{folder} holds several transformer files ({', '.join(p.name for p in found)}): "
                              "keep one, or choose one with --base FILE")
    return str(found[0]) if found else None


# ------------------------------------------------------------------------------------------------------- writing
def _bfl_state_dict(transformer) -> dict:
    """A diffusers FLUX transformer's state dict under BFL's key names (q/k/v fused, scale/shift order swapped)."""
    import torch

    sd = transformer.state_dict()
    out = {}

    def put(bfl, diffusers, *more):
        for suffix in ("weight", "bias"):
            parts = [sd.get(f"{k}.{suffix}") for k in (diffusers,) + more]
            if parts[0] is None:
                continue
            out[f"{bfl}.{suffix}"] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    put("img_in", "x_embedder")
    put("txt_in", "context_embedder")
    for bfl, ours in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                      ("guidance_in", "guidance_embedder")):
        put(f"{bfl}.in_layer", f"time_text_embed.{ours}.linear_1")
        put(f"{bfl}.out_layer", f"time_text_embed.{ours}.linear_2")
    for i in range(len(transformer.transformer_blocks)):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        put(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        put(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        put(f"{b}.img_attn.qkv", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v")
        put(f"{b}.txt_attn.qkv", f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_added_k.weight"]
        put(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        put(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
        put(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj")
        put(f"{b}.img_mlp.2", f"{d}.ff.net.2")
        put(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        put(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")
    for i in range(len(transformer.single_transformer_blocks)):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        put(f"{b}.modulation.lin", f"{d}.norm.linear")
        put(f"{b}.linear1", f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp")
        put(f"{b}.linear2", f"{d}.proj_out")
        out[f"{b}.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
    put("final_layer.linear", "proj_out")
    for suffix in ("weight", "bias"):  # diffusers' AdaLayerNormContinuous is (scale, shift); BFL's (shift, scale)
        scale, shift = sd[f"norm_out.linear.{suffix}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale], dim=0)
    return {k: v.contiguous() for k, v in out.items()}


def quantize_q8_0(tensor):
    """GGML Q8_0 blocks of a 2-D ``tensor`` (last dimension a multiple of 32) as a uint8 numpy array of shape
    ``(rows, columns // 32 * 34)``: per block of 32, a float16 scale (max |x| / 127) and 32 int8 values rounded
    half away from zero. The same bytes as ``gguf.quants.quantize(array, Q8_0)``, computed by torch on the
    tensor's device (a GPU quantizes FLUX.1-dev's 12 B weights in seconds; gguf's numpy takes minutes)."""
    import torch

    rows, columns = tensor.shape
    blocks = tensor.detach().float().reshape(-1, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    scaled = blocks * inverse
    a = scaled.abs()
    floored = torch.floor(a)
    q = torch.sign(scaled) * (floored + torch.floor(2 * (a - floored)))  # gguf's np_roundf
    packed = torch.cat([d.to(torch.float16).view(torch.uint8), q.to(torch.int8).view(torch.uint8)], dim=1)
    return packed.reshape(rows, columns // 32 * 34).cpu().numpy()


def write_transformer_file(transformer, path: str | os.PathLike, *, dtype=None, gguf_type: str = "Q8_0") -> Path:
    """Write ``transformer`` (a diffusers ``FluxTransformer2DModel``) as one BFL-layout file at ``path``.

    ``.safetensors``: every tensor in ``dtype`` (default: as it is; ``torch.float8_e4m3fn`` makes an fp8 file with
    Linear weights in fp8 and the rest in bf16, as the fp8 files people share are). ``.gguf``: 2-D weights in
    ``gguf_type`` (``Q8_0``, ``Q4_0``, ``Q5_0``...; city96's layout) where their rows allow it, the rest float32.
    Written atomically.
    """
    import torch

    from core.io.paths import atomic_path

    path = Path(path)
    state = _bfl_state_dict(transformer)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            if dtype is not None and dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                state = {k: v.to(dtype) if v.ndim == 2 else v.to(torch.bfloat16) for k, v in state.items()}
            elif dtype is not None:
                state = {k: v.to(dtype) for k, v in state.items()}
            save_file(state, str(tmp), metadata={"format": "pt"})
        elif path.suffix == ".gguf":
            import gguf
            import numpy as np

            qtype = gguf.GGMLQuantizationType[gguf_type]
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            writer = gguf.GGUFWriter(str(tmp), arch="flux")
            for key, tensor in state.items():
                if tensor.ndim == 2 and tensor.shape[1] % block == 0 and qtype == gguf.GGMLQuantizationType.Q8_0:
                    writer.add_tensor(key, quantize_q8_0(tensor), raw_dtype=qtype)  # on the tensor's device
                    continue
                array = tensor.detach().float().cpu().numpy()
                if array.ndim == 2 and array.shape[1] % block == 0:
                    writer.add_tensor(key, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
                else:
                    writer.add_tensor(key, np.ascontiguousarray(array, dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        else:
            raise ValueError(f"{path}: write .safetensors or .gguf")
    return path
