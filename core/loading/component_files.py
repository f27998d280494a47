"""FLUX.1's parts held as single files, as ComfyUI and Forge keep them: the VAE (BFL's ``ae.safetensors``), CLIP-L
(``clip_l.safetensors``), T5-XXL (``t5xxl_fp16.safetensors``, ``t5xxl_fp8_e4m3fn.safetensors``) and all-in-one
checkpoints holding every part under a prefix (Comfy-Org's ``flux1-dev-fp8.safetensors``).

:func:`inspect_file` reads a file's header only (tensor names, shapes, dtypes), says which parts it holds and under
which key prefix, and names what a file that is none of them looks like (an SD1.5 checkpoint, a LoRA, an SD VAE),
so a wrong or truncated file is refused in one line before anything large is read. The loaders are the libraries'
own: diffusers' ``AutoencoderKL.from_single_file`` (its ``convert_ldm_vae_checkpoint``) for the VAE and diffusers'
``create_diffusers_clip_model_from_ldm`` / ``create_diffusers_t5_model_from_checkpoint`` for the text encoders,
each given only its part's tensors, memory-mapped (safetensors' ``safe_open``). Configs come from the base folder
(``vae/config.json``...) or, with no base folder, from the bundled FLUX.1-dev configs (:func:`bundled_flux_folder`);
tokenizers from the base folder or from ungated hub repositories (:data:`FLUX_TOKENIZERS`), never from the gated
``black-forest-labs/FLUX.1-dev``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.loading.model_sizes import CONFIG_DIR
from core.loading.memory import WeightFiles
from core.loading.single_file import (BFL_KEY, DIFFUSERS_KEY, SingleFileError, inspect_transformer_file,
                                      safetensors_header)

# The FLUX parts a file can replace, in pipeline order, with the option naming each.
PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2")
OPTION = {"transformer": "--base", "vae": "--vae", "text_encoder": "--clip", "text_encoder_2": "--t5"}
PART_NAME = {"transformer": "FLUX.1 transformer", "vae": "FLUX VAE", "text_encoder": "CLIP-L text encoder",
             "text_encoder_2": "T5-XXL text encoder"}
# Key prefixes each part sits under: bare files first, then all-in-one checkpoints' prefixes as diffusers'
# single_file_utils knows them (LDM_UNET_KEY, LDM_VAE_KEYS, LDM_CLIP_PREFIX_TO_REMOVE, the SD3-style
# ``text_encoders.clip_l.transformer.`` / ``text_encoders.t5xxl.transformer.`` that Comfy-Org's files use).
PREFIXES = {
    "transformer": ("", "model.diffusion_model."),
    "vae": ("", "vae.", "first_stage_model."),
    "text_encoder": ("", "text_encoders.clip_l.transformer.", "cond_stage_model.transformer."),
    "text_encoder_2": ("", "text_encoders.t5xxl.transformer."),
}
# One tensor each part always has (any of them; after the prefix).
MARKERS = {
    "transformer": (BFL_KEY, DIFFUSERS_KEY),
    "vae": ("decoder.conv_in.weight",),
    "text_encoder": ("text_model.embeddings.position_embedding.weight", "embeddings.position_embedding.weight"),
    "text_encoder_2": ("encoder.block.0.layer.0.SelfAttention.q.weight",),
}
FLUX_LATENT_CHANNELS = 16
# Where the tokenizers come from when no base folder has them: ungated repositories with the same files as
# FLUX.1-dev's tokenizer/ (CLIP ViT-L/14's BPE) and tokenizer_2/ (T5 v1.1's SentencePiece model).
FLUX_TOKENIZERS = {"tokenizer": "openai/clip-vit-large-patch14", "tokenizer_2": "google/t5-v1_1-xxl"}
TOKENIZER_PATTERNS = ["tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                      "spiece.model", "tokenizer.json"]
_DTYPE_NAMES = {"F32": "float32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8 e4m3fn", "F8_E5M2": "fp8 e5m2"}


@dataclass(frozen=True)
class ComponentFile:
    """What one safetensors file holds, from its header alone.

    Attributes:
        path: the file.
        prefixes: each FLUX part found, with the key prefix it sits under (``""`` for a bare file).
        part_bytes: bytes of each part's tensors as stored (fp8 counts one byte per weight).
        dtypes: each part's stored dtypes (``{"F8_E4M3", "BF16"}``).
        file_bytes: the file's size on disk.
    """

    path: str
    prefixes: dict
    part_bytes: dict
    dtypes: dict
    file_bytes: int

    @property
    def all_in_one(self) -> bool:
        return len(self.prefixes) > 1

    def describe(self) -> str:
        """``a T5-XXL text encoder (fp8 e4m3fn)``, ``an all-in-one FLUX checkpoint (transformer, VAE, ...)``."""
        if self.all_in_one:
            return "an all-in-one FLUX checkpoint (" + ", ".join(PART_NAME[p] for p in self.prefixes) + ")"
        (part,) = self.prefixes
        stored = sorted(_DTYPE_NAMES.get(d, d) for d in self.dtypes[part])
        return f"{_article(PART_NAME[part])} {PART_NAME[part]} ({', '.join(stored)})"


def _article(word: str) -> str:
    return "an" if word[0] in "AEIOU" else "a"


def _what_else(names: set[str], shapes: dict) -> str:
    """What a file that holds no FLUX part looks like, from its tensor names."""
    if any(".lora_" in n or "lora_down" in n or "lora_A" in n for n in names):
        return "a LoRA"
    if any(n.startswith("model.diffusion_model.input_blocks.") for n in names):
        if any(n.startswith("conditioner.embedders.1.") for n in names):
            return "a Stable Diffusion XL checkpoint"
        return "a Stable Diffusion 1.x/2.x checkpoint (UNet)"
    if any(n.startswith("model.diffusion_model.joint_blocks.") for n in names):
        return "a Stable Diffusion 3 checkpoint"
    if any(n.startswith("input_blocks.") for n in names) or "conv_in.weight" in names and "time_embedding.linear_1.weight" in names:
        return "a UNet (Stable Diffusion)"
    for prefix in PREFIXES["vae"]:
        shape = shapes.get(prefix + "decoder.conv_in.weight")
        if shape is not None:
            return f"a VAE with {shape[1]} latent channels (FLUX's has {FLUX_LATENT_CHANNELS}: an SD/SDXL VAE?)"
    if any(n.startswith("vision_model.") for n in names):
        return "a vision encoder (CLIP/SigLIP vision tower)"
    if any(n.startswith(("text_model.encoder.", "encoder.layers.")) for n in names):
        return "a CLIP text encoder of another layout"
    sample = ", ".join(sorted(names)[:2]) or "no tensors"
    return f"no FLUX part (tensors such as {sample})"


# Tensors of other model families that also carry a CLIP or VAE under the same prefixes (an SD1.5 checkpoint
# holds ``cond_stage_model.transformer.``): such a file is that family's, not a FLUX file.
OTHER_FAMILIES = ("model.diffusion_model.input_blocks.", "model.diffusion_model.joint_blocks.",
                  "conditioner.embedders.")


def inspect_file(path: str | os.PathLike) -> ComponentFile:
    """Read a ``.safetensors`` file's header and say which FLUX parts it holds; raises :class:`SingleFileError`
    naming the file when it is missing, truncated, not safetensors, or holds no FLUX part."""
    found = _inspect(path)
    if isinstance(found, str):
        raise SingleFileError(f"{path} is not a FLUX file: it looks like {found}")
    return found


def _inspect(path: str | os.PathLike) -> ComponentFile | str:
    """What the file holds, or a description of what it looks like when it holds no FLUX part."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SingleFileError(f"file not found: {path}")
    if path.suffix.lower() == ".gguf":
        return _inspect_gguf(path)
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise SingleFileError(f"{path}: expected a .safetensors or .gguf file")
    header = safetensors_header(path)
    names = set(header)
    shapes = {k: v["shape"] for k, v in header.items()}
    if any(n.startswith(OTHER_FAMILIES) for n in names):
        return _what_else(names, shapes)
    prefixes, part_bytes, dtypes = {}, {}, {}
    for part in PARTS:
        prefix = next((p for p in PREFIXES[part] if any(p + m in names for m in MARKERS[part])), None)
        if prefix is None:
            continue
        if part == "vae":
            channels = shapes[prefix + "decoder.conv_in.weight"][1]
            if channels != FLUX_LATENT_CHANNELS:
                continue  # an SD VAE: named by _what_else
        own = _part_keys(part, prefix, names, prefixes)
        prefixes[part] = prefix
        part_bytes[part] = sum(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in own)
        dtypes[part] = frozenset(header[k]["dtype"] for k in own)
    if not prefixes:
        return _what_else(names, shapes)
    return ComponentFile(str(path), prefixes, part_bytes, dtypes, path.stat().st_size)


# A tensor every T5 encoder GGUF has, under llama.cpp's names (city96's t5-v1_1-xxl-encoder-gguf files).
T5_GGUF_KEY = "enc.blk.0.attn_q.weight"


def _inspect_gguf(path: Path) -> ComponentFile | str:
    """A GGUF file: a FLUX transformer (city96's layout, see :mod:`core.loading.single_file`) or a T5 encoder."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - gguf raises ValueError, struct.error, IndexError... on bad files
        raise SingleFileError(f"{path} is not a valid GGUF file ({type(exc).__name__})") from None
    names = {t.name for t in reader.tensors}
    part = ("text_encoder_2" if T5_GGUF_KEY in names else
            "transformer" if BFL_KEY in names or "model.diffusion_model." + BFL_KEY in names or DIFFUSERS_KEY in names
            else None)
    if part is None:
        return f"a GGUF of another model (tensors such as {', '.join(sorted(names)[:2]) or 'none'})"
    return ComponentFile(str(path), {part: ""}, {part: sum(int(t.n_bytes) for t in reader.tensors)},
                         {part: frozenset(t.tensor_type.name for t in reader.tensors)}, path.stat().st_size)


def gguf_t5_tensors(path: str | os.PathLike, config, dtype) -> dict:
    """A T5 encoder GGUF's tensors under transformers' names, each dequantized (gguf's own dequantizer) and cast
    to ``dtype`` one at a time, so no whole float32 copy is ever held. The names come from transformers' own GGUF
    table (``get_gguf_hf_weights_map``, built on gguf-py's tensor-name map for T5)."""
    import gguf
    import torch
    from transformers import T5EncoderModel
    from transformers.modeling_gguf_pytorch_utils import T5TensorProcessor, get_gguf_hf_weights_map

    with torch.device("meta"):
        model = T5EncoderModel(config)
    names = get_gguf_hf_weights_map(model, T5TensorProcessor(), model_type="t5", num_layers=config.num_layers)
    out = {}
    for tensor in gguf.GGUFReader(path).tensors:
        if tensor.name not in names:
            raise SingleFileError(f"{path}: tensor {tensor.name} is not part of a T5 encoder of the config")
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        out[names[tensor.name]] = torch.from_numpy(array.copy()).to(dtype)
    return out


def _part_keys(part: str, prefix: str, names, others: dict) -> list[str]:
    """The tensor names of ``part`` under ``prefix``; a bare part in a file of one part owns every tensor."""
    if prefix:
        return [n for n in names if n.startswith(prefix)]
    taken = tuple(p for q in others.values() for p in (q,) if p)
    return [n for n in names if not (taken and n.startswith(taken))]


def check_file(path: str | os.PathLike, part: str) -> ComponentFile:
    """:func:`inspect_file`, refusing a file that does not hold ``part`` in one line naming the file, the option
    and what the file looks like."""
    info = _inspect(path)
    wanted = f"{_article(PART_NAME[part])} {PART_NAME[part]}"
    if isinstance(info, str):
        raise SingleFileError(f"{path} given as {OPTION[part]} looks like {info}, not {wanted}")
    if part not in info.prefixes:
        raise SingleFileError(f"{info.path} given as {OPTION[part]} is {info.describe()}, not {wanted}")
    return info


def file_digest(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """A short fingerprint of a weight file for PNG records: SHA-256 of its size and header (the first MiB),
    so naming a 20 GB file costs one small read; ``sha256:`` and 16 hex digits."""
    path = Path(path)
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
    return "sha256:" + h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------- loading
def read_part(info: ComponentFile, part: str) -> dict:
    """``part``'s tensors from the file, memory-mapped (safetensors' ``safe_open``), under their names in the file
    (prefix kept): only this part's pages are ever read."""
    from safetensors import safe_open

    prefix = info.prefixes[part]
    with safe_open(info.path, framework="pt") as f:
        names = _part_keys(part, prefix, set(f.keys()), {p: q for p, q in info.prefixes.items() if p != part})
        return {name: f.get_tensor(name) for name in names}


def _check_loaded(model, info: ComponentFile, part: str):
    """A part the file lacked tensors for would be left on the meta device: name the file instead."""
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise SingleFileError(f"{info.path} does not hold a complete {PART_NAME[part]}: no tensor for "
                              f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return model.eval()


def load_part(info: ComponentFile, part: str, dtype, config_folder: str | os.PathLike):
    """The FLUX ``part`` (``vae``, ``text_encoder``, ``text_encoder_2``) from a file, in ``dtype``, with the config
    in ``config_folder/<part>/``; errors are :class:`SingleFileError` naming the file."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (create_diffusers_clip_model_from_ldm,
                                                     create_diffusers_t5_model_from_checkpoint)
    from transformers import CLIPTextModel, T5EncoderModel

    prefix = info.prefixes[part]
    gguf_file = info.path.lower().endswith(".gguf")
    tensors = {} if gguf_file else read_part(info, part)
    try:
        if gguf_file:  # a T5 GGUF: dequantized tensor by tensor under transformers' names (inspect_file checked)
            from transformers import T5Config

            config = T5Config.from_pretrained(str(config_folder), subfolder="text_encoder_2", local_files_only=True)
            tensors = gguf_t5_tensors(info.path, config, dtype)
        if part == "vae":
            # diffusers' converter finds the ldm prefix itself (LDM_VAE_KEYS); a bare ae.safetensors needs none
            return AutoencoderKL.from_single_file(tensors, config=str(config_folder), subfolder="vae",
                                                  torch_dtype=dtype, local_files_only=True).eval()
        bare = {k[len(prefix):]: v for k, v in tensors.items()}
        if part == "text_encoder":
            # diffusers' loader reads CLIP under an ldm prefix, with transformers' (pre-5.6) ``text_model.`` names
            clip_prefix = "cond_stage_model.transformer."
            checkpoint = {clip_prefix + (k if k.startswith("text_model.") or k == "text_projection.weight"
                                         else "text_model." + k): v for k, v in bare.items()}
            checkpoint.pop(clip_prefix + "text_projection.weight", None)  # CLIP-L's projection: unused by FLUX
            model = create_diffusers_clip_model_from_ldm(CLIPTextModel, checkpoint, subfolder="text_encoder",
                                                         config=str(config_folder), torch_dtype=dtype,
                                                         local_files_only=True)
            return _check_loaded(model, info, part)
        # T5's token embedding is stored once, as ``shared``; transformers 5 ties encoder.embed_tokens to it only
        # when loading through from_pretrained, so the tie is given here as the same tensor
        if "shared.weight" in bare and "encoder.embed_tokens.weight" not in bare:
            bare["encoder.embed_tokens.weight"] = bare["shared.weight"]
        checkpoint = {"text_encoders.t5xxl.transformer." + k: v for k, v in bare.items()}
        model = create_diffusers_t5_model_from_checkpoint(T5EncoderModel, checkpoint, subfolder="text_encoder_2",
                                                          config=str(config_folder), torch_dtype=dtype,
                                                          local_files_only=True)
        return _check_loaded(model, info, part)
    except SingleFileError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, IndexError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SingleFileError(f"cannot load the {PART_NAME[part]} from {info.path} with the config in "
                              f"{Path(config_folder) / part}: {first[:300]}") from None
    finally:
        del tensors
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


# --------------------------------------------------------------------------------------------- bundled configs
FLUX_MODEL_INDEX = {
    "_class_name": "FluxPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
_BUNDLED = {"transformer/config.json": "flux1-dev-transformer.json", "vae/config.json": "flux1-dev-vae.json",
            "text_encoder/config.json": "flux1-dev-text-encoder.json",
            "text_encoder_2/config.json": "flux1-dev-text-encoder-2.json",
            "scheduler/scheduler_config.json": "flux1-dev-scheduler.json"}


def bundled_flux_folder() -> Path:
    """A FLUX.1-dev pipeline folder of configs only (no weights, no tokenizers), written once to the user cache
    from ``assets/configs``: what ``from_single_file`` and ``FluxPipeline.from_pretrained`` read when every
    weight comes from a file."""
    from core.io.paths import atomic_path, cache_dir

    folder = cache_dir("configs", "flux1-dev")
    wanted = {name: (CONFIG_DIR / source).read_text() for name, source in _BUNDLED.items()}
    wanted["model_index.json"] = json.dumps(FLUX_MODEL_INDEX, indent=2)
    for name, text in wanted.items():
        target = folder / name
        if not target.is_file() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                Path(tmp).write_text(text)
    return folder


# SigLIP so400m-patch14-384's image processor (its preprocessor_config.json): 384 px bicubic, mean and std 0.5.
SIGLIP_PROCESSOR = {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
                    "size": {"height": 384, "width": 384}, "resample": 3, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}


def vision_tower_folder(path: str | os.PathLike) -> str:
    """A model folder for a SigLIP so400m-patch14-384 vision tower held as one file (ComfyUI's ``clip_vision/``):
    the bundled config, the processor's settings and a link to the file, in the user cache, so transformers'
    own ``from_pretrained`` loads it (memory-mapped, its key names as they are)."""
    from core.io.paths import atomic_path, cache_dir

    path = Path(path).expanduser().resolve()
    folder = cache_dir("vision-towers", file_digest(path).removeprefix("sha256:"))
    texts = {"config.json": (CONFIG_DIR / "siglip-so400m-patch14-384-vision.json").read_text(),
             "preprocessor_config.json": json.dumps(SIGLIP_PROCESSOR, indent=2)}
    for name, text in texts.items():
        if not (folder / name).is_file() or (folder / name).read_text() != text:
            with atomic_path(folder / name) as tmp:
                Path(tmp).write_text(text)
    link = folder / "model.safetensors"
    if not link.is_symlink() or Path(os.readlink(link)) != path:
        link.unlink(missing_ok=True)
        link.symlink_to(path)
    return str(folder)


def weight_files(part_files: dict[str, str]) -> WeightFiles:
    """The planner's view of the FLUX parts given as files (``ModelSources.part_files()``): a GGUF transformer's
    quantized bytes as held, and the most bytes read from one file at once, each part's real stored bytes (an fp8
    T5 counts one byte per weight; an all-in-one file is read part by part, not whole)."""
    from dataclasses import replace

    files = WeightFiles()
    if part_files.get("transformer"):
        files = inspect_transformer_file(part_files["transformer"]).weight_files()
    read = [files.largest_file_bytes] if part_files.get("transformer") else []
    for part, path in part_files.items():
        if part != "transformer":
            read.append(inspect_file(path).part_bytes[part])
    return replace(files, largest_file_bytes=max(read)) if read else files
