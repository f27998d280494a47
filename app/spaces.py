"""Hugging Face Spaces and ZeroGPU: detection and the ``spaces.GPU`` wrapping of GPU work.

On ZeroGPU a GPU is attached only while a function decorated with ``spaces.GPU`` runs, for at most its
``duration`` seconds; shorter requests get priority in ZeroGPU's queue, so the duration is estimated per request.
Anywhere else the GPU function is returned unchanged and the ``spaces`` package is not needed.
"""

from __future__ import annotations

import os

# Seconds per denoising step of FLUX.1-dev at 1024x1024 on ZeroGPU's H200 slice, with margin; plus fixed costs.
SECONDS_PER_MEGAPIXEL_STEP = 0.6
FIXED_SECONDS = 15
MIN_DURATION, MAX_DURATION = 30, 300


def on_spaces() -> bool:
    """True inside a Hugging Face Space (Spaces sets ``SPACE_ID``)."""
    return bool(os.environ.get("SPACE_ID"))


def on_zero_gpu() -> bool:
    """True on ZeroGPU hardware (Spaces sets ``SPACES_ZERO_GPU``)."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true", "yes")


def estimate_duration(width: int, height: int, steps: int, images: int = 1, true_cfg: bool = False,
                      characters: int = 0) -> int:
    """Seconds of GPU to ask ZeroGPU for one request, clamped to what ZeroGPU grants."""
    per_step = SECONDS_PER_MEGAPIXEL_STEP * (width * height / 2**20) * (2 if true_cfg else 1) * (1 + 0.1 * characters)
    seconds = FIXED_SECONDS + images * steps * per_step
    return int(min(MAX_DURATION, max(MIN_DURATION, round(seconds))))


def gpu_function(fn, duration):
    """``spaces.GPU(duration=duration)(fn)`` on ZeroGPU, else ``fn`` itself.

    ``duration`` is seconds, or a callable taking ``fn``'s arguments and returning seconds.
    """
    if not on_zero_gpu():
        return fn
    import spaces  # only on ZeroGPU, where the Space image provides it

    return spaces.GPU(duration=duration)(fn)


# ------------------------------------------------------------------------ ahead-of-time compilation (ZeroGPU)
AOT_DURATION = 1500  # seconds of GPU asked once at start-up for exporting and compiling the transformer
AOT_PROMPT = "a character standing in a park"


def _flat_call(transformer, masked: tuple[bool, ...]):
    """The transformer's call with the characters as flat tensors (what ``torch.export`` takes): ``tokens``,
    ``scales`` (one 0-dim tensor each) and ``masks`` (for the masked ones, in order)."""
    import torch

    from core.models.attention import CharacterCondition

    class FlatTransformerCall(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, hidden_states, timestep, guidance, pooled_projections, encoder_hidden_states, txt_ids,
                    img_ids, tokens, scales, masks):
            kwargs = None
            if tokens:
                masks_left = list(masks)
                conditions = []
                for tok, scale, has_mask in zip(tokens, scales, masked):
                    cond = CharacterCondition(tok, 1.0, masks_left.pop(0) if has_mask else None)
                    cond.scale_tensor = scale  # the request's scale, an input of the compiled program
                    conditions.append(cond)
                kwargs = {"character_conditions": conditions, "text_seq_len": encoder_hidden_states.shape[1]}
            return self.transformer(hidden_states=hidden_states, timestep=timestep, guidance=guidance,
                                    pooled_projections=pooled_projections,
                                    encoder_hidden_states=encoder_hidden_states, txt_ids=txt_ids, img_ids=img_ids,
                                    joint_attention_kwargs=kwargs, return_dict=False)[0]

    return FlatTransformerCall()


_TENSOR_ARGS = ("hidden_states", "timestep", "guidance", "pooled_projections", "encoder_hidden_states", "txt_ids",
                "img_ids")


def _flatten(kwargs: dict):
    """``(signature, flat kwargs)`` of one transformer call from ``InstantCharacterPipeline._predict``, or
    ``(None, None)`` when the call has something the compiled program cannot take (text-adapter tokens, a
    ControlNet's residuals, a regional-text mask, a per-region character)."""
    import torch

    joint = kwargs.get("joint_attention_kwargs") or {}
    conditions = list(joint.get("character_conditions") or [])
    if any(c.text_tokens is not None for c in conditions) or any(k not in kwargs for k in _TENSOR_ARGS):
        return None, None
    if kwargs.get("controlnet_block_samples") is not None or kwargs.get("controlnet_single_block_samples") is not None:
        return None, None
    if joint.get("regional_text") is not None or any(c.reach is not None for c in conditions):
        return None, None
    masked = tuple(c.mask is not None for c in conditions)
    flat = {name: kwargs[name] for name in _TENSOR_ARGS}
    flat.update(tokens=[c.tokens for c in conditions], scales=[c.scale_tensor for c in conditions],
                masks=[c.mask for c in conditions if c.mask is not None])
    shapes = tuple(tuple(t.shape) if isinstance(t, torch.Tensor) else t for t in
                   [flat[n] for n in _TENSOR_ARGS] + flat["tokens"] + flat["masks"])
    return (masked, shapes), flat


def install_compiled(transformer, compiled, signature) -> None:
    """Calls of ``transformer`` with ``signature`` (character layout and shapes) go to ``compiled``; any other
    call (another size, more characters, a text adapter, a draft's step cache) runs the eager forward."""
    from core.loading.speed import step_cache_threshold

    eager = transformer.forward

    def forward(*args, **kwargs):
        if not args and kwargs.get("return_dict") is False and step_cache_threshold(transformer) is None:
            call_signature, flat = _flatten(kwargs)
            if call_signature == signature:
                return (compiled(**flat),)
        return eager(*args, **kwargs)

    transformer.forward = forward
    transformer._aot_signature = signature


def compile_ahead_of_time(engine, width: int = 1024, height: int = 1024, *, force: bool = False) -> list[str]:
    """On ZeroGPU with a compiling speed mode: exports the transformer's call for one unmasked character at
    ``width`` x ``height`` and compiles it with the ``spaces`` package's AoT helpers (``aoti_capture``,
    ``aoti_compile``) in one start-up GPU call, so visitors' GPU seconds are not spent compiling. Other calls run
    eagerly. Returns lines saying what happened; any failure leaves the eager transformer with one line why.

    ``force`` runs it off ZeroGPU too (tests, with a stand-in ``spaces`` module).
    """
    if not engine.speed.compile:
        return []
    if not (force or on_zero_gpu()):
        return []
    try:
        import spaces
    except ImportError:
        return ["ahead-of-time compile: off (the spaces package is not installed); the transformer runs eagerly"]
    try:
        import torch

        from benchmarks.bench import bench_character
        from core.loading.speed import forget_compilation

        pipe = engine.load()
        transformer = pipe.transformer
        forget_compilation(transformer)  # the JIT-compiled blocks would compile on a visitor's call

        def build():
            with spaces.aoti_capture(transformer) as call:
                pipe(AOT_PROMPT, characters=[bench_character()], num_inference_steps=1, width=width, height=height,
                     output_type="latent")
            signature, flat = _flatten(call.kwargs)
            if signature is None:
                raise RuntimeError("the captured call has text-adapter tokens")
            # the character tokens were made under inference_mode: export needs ordinary tensors
            flat = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, flat)
            with torch.no_grad():
                exported = torch.export.export(_flat_call(transformer, signature[0]), args=(), kwargs=flat)
            return signature, spaces.aoti_compile(exported)

        signature, compiled = spaces.GPU(duration=AOT_DURATION)(build)()
        install_compiled(transformer, compiled, signature)
    except Exception as exc:  # noqa: BLE001 - a Space must start: any failure means eager, said in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"ahead-of-time compile: off ({type(exc).__name__}: {reason[:200]}); the transformer runs eagerly"]
    return [f"ahead-of-time compiled the transformer for one character at {width}x{height} (spaces.aoti_compile); "
            "other calls run eagerly"]
