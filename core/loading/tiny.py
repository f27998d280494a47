"""Random-weight models: tiny ones for trying the studio and for tests (no download, seconds on a CPU), and the
parts any size of them is made of.

:func:`random_model` makes one model of the pipeline (FLUX's four, SigLIP, DINOv2) from its config with its class's
own initialisation, :func:`random_adapter` the adapter; :func:`flux_scheduler` and :func:`encoder_processors` are the
released models' scheduler and image processors. The tiny models and the benchmarks' full-size ones
(:mod:`benchmarks.random_models`) are made of these.

:func:`build_tiny_bundle` writes a models directory laid out like the real one (``flux/``, ``siglip/``,
``dinov2/``, ``adapter.safetensors``; ``controlnet/`` for control images; ``metrics/clip`` and ``metrics/dino`` for
the scores), which then loads through the same ``from_pretrained`` path as real models.
Shapes follow FLUX.1-dev and the released adapter, shrunk; the images it makes are noise-like by nature. The VAE
compresses 8x with 16 latent channels as FLUX's does, so the real settings (1024x1024: 4096 image tokens, 28 steps)
take seconds on a CPU.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from core.io.paths import cache_dir

TINY_VERSION = "5"
_MARKER = "tiny-bundle.json"

T5_WIDTH = 32
CLIP_WIDTH = 32
# transformer width 64: like FLUX.1-dev's (3072) no narrower than the 64 packed latent channels it predicts (a
# narrower one leaves the adapter little to learn); 2 heads of 32 rather than 4 of 16: faster attention on a CPU
HEADS, HEAD_DIM = 2, 32
ROPE_AXES = (4, 14, 14)  # sums to HEAD_DIM: FLUX.1-dev's (16, 56, 56) scaled by a quarter
LATENT_CHANNELS = 16  # FLUX.1-dev's VAE
# FLUX.1-dev's scheduler settings
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                      base_shift=0.5, max_shift=1.15)
MODEL_PARTS = ("transformer", "text_encoder", "text_encoder_2", "vae", "siglip", "dinov2")


# ------------------------------------------------------------------------------------------- any size
def random_model(part: str, config: dict):
    """A model of the pipeline with random weights: ``part`` one of :data:`MODEL_PARTS`, ``config`` its config's
    keyword arguments (as in a ``config.json``). Made by its class's own initialisation from the current RNG, on the
    default device and dtype, in eval mode."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import (CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model, SiglipVisionConfig,
                              SiglipVisionModel, T5Config, T5EncoderModel)

    makers = {
        "transformer": lambda: FluxTransformer2DModel.from_config(config),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**config)),
        "text_encoder_2": lambda: T5EncoderModel(T5Config(**{**config, "dropout_rate": 0.0})),
        "vae": lambda: AutoencoderKL.from_config(config),
        "siglip": lambda: SiglipVisionModel(SiglipVisionConfig(**config)),
        "dinov2": lambda: Dinov2Model(Dinov2Config(**config)),
    }
    if part not in makers:
        raise ValueError(f"unknown model part {part!r}: one of {', '.join(MODEL_PARTS)}")
    return makers[part]().eval()


def random_adapter(projector_config, transformer_config: dict):
    """The adapter with random weights: a :class:`~core.models.projector.CharacterProjector` of
    ``projector_config`` and the :class:`~core.models.attention.CharacterAttentionLayers` of a transformer of
    ``transformer_config`` (one per block, its attention width and head size), made in that order."""
    from core.models.attention import CharacterAttentionLayers
    from core.models.projector import CharacterProjector

    t = transformer_config
    projector = CharacterProjector(projector_config)
    layers = CharacterAttentionLayers(t["num_layers"] + t["num_single_layers"],
                                      t["num_attention_heads"] * t["attention_head_dim"], projector_config.output_dim,
                                      t["attention_head_dim"])
    return projector, layers


def flux_scheduler():
    """FLUX.1-dev's flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)


def encoder_processors(pil: bool = True) -> tuple:
    """SigLIP's and DINOv2's image processors with the released models' settings; ``pil``: the PIL-backed classes
    (else transformers' default ones)."""
    import transformers

    suffix = "Pil" if pil else ""
    siglip = getattr(transformers, "SiglipImageProcessor" + suffix)(
        size={"height": 384, "width": 384}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    dinov2 = getattr(transformers, "BitImageProcessor" + suffix)(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)
    return siglip, dinov2


# ------------------------------------------------------------------------------------------- tiny
def tiny_configs() -> dict[str, dict]:
    """The tiny models' configs (:func:`random_model`'s ``config`` per part): FLUX.1-dev's shapes shrunk."""
    return {
        # packed latents: 2x2 patches of the VAE's 16 channels, as in FLUX.1-dev
        "transformer": dict(patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1,
                            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=T5_WIDTH,
                            pooled_projection_dim=CLIP_WIDTH, guidance_embeds=True, axes_dims_rope=ROPE_AXES),
        # FLUX's VAE layout (4 blocks, so 8x: 1024x1024 is a 128x128 latent, 4096 packed tokens), few channels
        "vae": dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[4, 4, 8, 8], layers_per_block=1,
                    latent_channels=LATENT_CHANNELS, norm_num_groups=2, sample_size=1024, use_quant_conv=False,
                    use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
        "text_encoder": dict(vocab_size=len(build_clip_tokenizer()), hidden_size=CLIP_WIDTH, intermediate_size=37,
                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                             projection_dim=CLIP_WIDTH, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        "text_encoder_2": dict(vocab_size=len(build_t5_tokenizer()), d_model=T5_WIDTH, d_ff=37, d_kv=8, num_layers=2,
                               num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                               dropout_rate=0.0),
        # layer counts are the real ones' (27 and 40 would do; 30 is enough for DINOv2's shallow layer 29)
        "siglip": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=27, num_attention_heads=2,
                       image_size=384, patch_size=14),
        "dinov2": dict(hidden_size=32, num_hidden_layers=30, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                       image_size=518),
    }


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's table)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    table = {}
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def build_clip_tokenizer():
    """A CLIP tokenizer over single bytes (empty merge list): every word splits into byte tokens."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_t5_tokenizer():
    """A unigram T5 tokenizer over letters, digits and punctuation, with word-start variants."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()":
        pieces += [(ch, -5.0), ("\u2581" + ch, -4.0)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def build_tiny_flux(folder: Path) -> None:
    from diffusers import FluxPipeline

    configs = tiny_configs()
    models = {part: random_model(part, configs[part]) for part in ("transformer", "vae", "text_encoder",
                                                                  "text_encoder_2")}
    FluxPipeline(scheduler=flux_scheduler(), tokenizer=build_clip_tokenizer(), tokenizer_2=build_t5_tokenizer(),
                 **models).save_pretrained(folder)


def build_tiny_controlnet(folder: Path | None = None, num_layers: int = 1, num_single_layers: int = 1,
                          num_mode: int | None = None, seed: int = 2):
    """A random ``FluxControlNetModel`` for the tiny transformer (its widths), saved to ``folder`` when given.

    Its output projections (``controlnet_blocks``, ``controlnet_x_embedder``) start at zero in diffusers, which
    would make it do nothing: here they are random too, so control images change the tiny images."""
    from diffusers import FluxControlNetModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = FluxControlNetModel(
            patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=num_layers, num_single_layers=num_single_layers,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=T5_WIDTH,
            pooled_projection_dim=CLIP_WIDTH, guidance_embeds=True, axes_dims_rope=ROPE_AXES, num_mode=num_mode)
        zeroed = [net.controlnet_x_embedder, *net.controlnet_blocks, *net.controlnet_single_blocks]
        for module in zeroed:
            torch.nn.init.normal_(module.weight, std=0.05)
    net.eval()
    if folder is not None:
        net.save_pretrained(folder)
    return net


def build_tiny_preprocessors(folder: Path, seed: int = 3) -> Path:
    """Tiny random models of the preprocessors' classes (``depth/``: DepthAnythingForDepthEstimation, ``pose/``:
    VitPoseForPoseEstimation, ``person/``: RTDetrForObjectDetection) with their image processors; their outputs
    are noise, their shapes and code paths the real ones'."""
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor,
                              RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig,
                              VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor)

    folder = Path(folder)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                                patch_size=14, image_size=518, out_features=["stage1", "stage2", "stage3", "stage4"],
                                reshape_hidden_states=False)
        DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16, head_hidden_size=8)).eval().save_pretrained(folder / "depth")
        DPTImageProcessor(size={"height": 70, "width": 70}, keep_aspect_ratio=True, ensure_multiple_of=14,
                          do_pad=False, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                          resample=3).save_pretrained(folder / "depth")
        pose_backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                              image_size=[64, 48], patch_size=[16, 16], out_indices=[2])
        VitPoseForPoseEstimation(VitPoseConfig(backbone_config=pose_backbone, num_labels=17)).eval().save_pretrained(
            folder / "pose")
        VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(folder / "pose")
        resnet = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                    layer_type="basic", out_features=["stage2", "stage3", "stage4"])
        detector = RTDetrForObjectDetection(RTDetrConfig(
            backbone_config=resnet, encoder_hidden_dim=16, encoder_in_channels=[16, 32, 64], encoder_ffn_dim=32,
            d_model=16, decoder_in_channels=[16, 16, 16], decoder_ffn_dim=32, num_queries=10, decoder_layers=1,
            encoder_layers=1, decoder_attention_heads=2, encoder_attention_heads=2, num_labels=80,
            decoder_n_points=2)).eval()
        detector.save_pretrained(folder / "person")
        RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder / "person")
    return folder


def build_tiny_encoders(folder: Path) -> None:
    configs = tiny_configs()
    for part, processor in zip(("siglip", "dinov2"), encoder_processors(pil=True)):
        random_model(part, configs[part]).save_pretrained(folder / part)
        processor.save_pretrained(folder / part)


def build_tiny_adapter(path: Path) -> None:
    """A random adapter of the released layout for the tiny models."""
    from core.loading.checkpoint import save_adapter
    from core.models.projector import ProjectorConfig

    projector, layers = random_adapter(ProjectorConfig(inner_dim=64, num_layers=1, resampler_dim=64,
                                                       resampler_depth=1, num_queries=8, output_dim=T5_WIDTH),
                                       tiny_configs()["transformer"])
    save_adapter(path, projector.state_dict(), layers.state_dict(), {"source": "random tiny adapter"})


def build_tiny_clip(folder: Path) -> Path:
    """A tiny CLIP (model, byte-level tokenizer, image processor) for CLIP-I and CLIP-T."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_dino(folder: Path) -> Path:
    """A tiny DINO ViT for DINO-I."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(1)
    config = ViTConfig(image_size=48, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 48, "width": 48}).save_pretrained(folder)
    return folder


def tiny_metric_models(folder: str | Path) -> dict[str, Path]:
    """The CLIP and DINO folders inside a tiny models directory."""
    folder = Path(folder)
    return {"clip": folder / "metrics" / "clip", "dino": folder / "metrics" / "dino"}


def build_tiny_bundle(folder: str | Path, seed: int = 0) -> Path:
    """Writes a complete tiny models directory to ``folder`` and returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        build_tiny_flux(folder / "flux")
        build_tiny_encoders(folder)
        build_tiny_adapter(folder / "adapter.safetensors")
        metrics = tiny_metric_models(folder)
        build_tiny_clip(metrics["clip"])
        build_tiny_dino(metrics["dino"])
    build_tiny_controlnet(folder / "controlnet")  # its own seed: the other models are those of before
    build_tiny_preprocessors(folder / "preprocessors")
    (folder / _MARKER).write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))
    return folder


def _is_current(folder: Path) -> bool:
    """Whether ``folder`` holds a finished tiny bundle of this :data:`TINY_VERSION`."""
    try:
        return json.loads((folder / _MARKER).read_text()).get("version") == TINY_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def ensure_tiny_bundle(folder: str | Path | None = None) -> Path:
    """The tiny models directory in the user cache, built on first use (a few seconds); a bundle of another
    :data:`TINY_VERSION` is rebuilt."""
    folder = Path(folder) if folder else cache_dir("tiny-models") / f"v{TINY_VERSION}"
    if _is_current(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    try:
        build_tiny_bundle(staging)
        if _is_current(folder):  # another process finished first
            return folder
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
