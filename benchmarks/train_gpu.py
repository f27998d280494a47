"""GPU check of the training presets: a few optimizer steps of each single-card preset on full-size random weights.

    python -m benchmarks.train_gpu [--presets 24gb 48gb 80gb] [--steps 4] [--timeout 900] [--dry-run]

For every preset and stage, a child process builds the training model from the full-size configs (FLUX.1-dev's
transformer, the released adapter's layout, the text adapter's default sizes) with random weights on the GPU,
quantizes the frozen transformer as the preset says (quanto int8 / fp8, or bitsandbytes nf4 / int8), and runs
``--steps`` optimizer steps at the stage's resolution and micro batch on random cached inputs (the presets cache
every encoder's output, so no encoder is needed): bf16 autocast, gradient checkpointing, the preset's optimizer
(bitsandbytes AdamW8bit or torch AdamW). It records ``torch.cuda.max_memory_allocated`` over the steps (reset
after the weights are in place) and the mean seconds per step after the first. Each child runs under a timeout;
one JSON line per measurement is appended to ``benchmarks/results/train_gpu.jsonl`` and a table printed with the
planner's figure (``trainer.plan``) beside the measured one and whether it stays under the preset's card.

``--dry-run`` needs no GPU: it prints the plan and the child commands it would run, and writes nothing.
Multi-GPU (FSDP) presets are not measured here (one card).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "train_gpu.jsonl"
CARD_GIB = {"24gb": 24, "48gb": 48, "80gb": 80}


def _quantize(transformer, quantization: str) -> None:
    import torch

    if quantization.startswith("quanto-"):
        from core.loading.presets import _adapter_patterns, quantize_with_quanto

        quantize_with_quanto(transformer, quantization, exclude=_adapter_patterns(transformer))
        return
    import bitsandbytes as bnb

    adapter = {n for n, m in transformer.named_modules() if n.endswith(".processor")}
    for name, module in list(transformer.named_modules()):
        if not isinstance(module, torch.nn.Linear) or any(name.startswith(a + ".") for a in adapter):
            continue
        parent, _, leaf = name.rpartition(".")
        owner = transformer.get_submodule(parent) if parent else transformer
        if quantization == "bnb-nf4":
            new = bnb.nn.Linear4bit(module.in_features, module.out_features, module.bias is not None,
                                    compute_dtype=torch.bfloat16, quant_type="nf4", device="cpu")
            new.weight = bnb.nn.Params4bit(module.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        else:
            new = bnb.nn.Linear8bitLt(module.in_features, module.out_features, module.bias is not None,
                                      has_fp16_weights=False, device="cpu")
            new.weight = bnb.nn.Int8Params(module.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
        if module.bias is not None:
            new.bias = torch.nn.Parameter(module.bias.data.cpu(), requires_grad=False)
        setattr(owner, leaf, new.cuda())  # bitsandbytes quantizes on the move to the GPU
        del module
    torch.cuda.empty_cache()


def _random_(module, std: float = 0.02) -> None:
    import torch

    with torch.no_grad():
        for p in list(module.parameters()) + list(module.buffers()):
            if p.is_floating_point():
                p.normal_(0.0, std)


def run_child(preset: str, stage_index: int, steps: int) -> dict:
    """Measures one preset's stage on CUDA device 0 (see the module docstring); returns the JSON record."""
    import torch

    from trainer.config import TRAIN_PRESETS, preset_config
    from trainer.plan import ModelDescription, build_meta_model, meta_inputs, plan_training

    config = preset_config(preset)
    stage = config.stages[stage_index]
    planned = plan_training(config, 1).stages[stage_index]
    device = torch.device("cuda")
    desc = ModelDescription.for_config(config)
    model, transformer = build_meta_model(desc, config, torch.float32)
    transformer.to_empty(device=device)
    _random_(transformer)
    transformer.to(torch.bfloat16).requires_grad_(False).eval()
    model.to_empty(device=device)
    _random_(model)
    for part in model.parts.values():
        if hasattr(part, "prepare_for_training"):
            part.prepare_for_training(torch.bfloat16)
    for part in model._frozen.parts.values():
        part.to_empty(device=device)
        _random_(part)
        part.to(torch.bfloat16)
    quant = config.models.base_quantization
    if quant:
        _quantize(transformer, quant)
    transformer.enable_gradient_checkpointing()
    params = [p for p in model.parameters() if p.requires_grad]
    o = config.optimizer
    kwargs = dict(lr=stage.learning_rate, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay)
    if o.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, **kwargs)
    else:
        optimizer = torch.optim.AdamW(params, **kwargs)
    micro = config.micro_batch(stage, 1)
    shapes = meta_inputs(desc, config, micro, stage.resolution, torch.bfloat16)

    def real(t):
        return None if t is None else torch.randn(t.shape, dtype=t.dtype, device=device)

    from trainer.objective import CharacterSlot, TrainingInputs

    slot = shapes.characters[0]
    inputs = TrainingInputs(real(shapes.latents), real(shapes.noise), torch.rand(micro, device=device) * 0.9 + 0.05,
                            torch.zeros(shapes.image_ids.shape, device=device), real(shapes.prompt_embeds),
                            real(shapes.pooled), torch.zeros(shapes.text_ids.shape, device=device),
                            [CharacterSlot(real(slot.low_res_deep), real(slot.low_res_shallow),
                                           real(slot.high_res_deep), None,
                                           None if slot.text_mask is None else torch.zeros(slot.text_mask.shape,
                                                                                           device=device))],
                            shapes.captions, shapes.spans)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        for _ in range(config.run.gradient_accumulation_steps):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(inputs) / config.run.gradient_accumulation_steps
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated()
    return {"preset": preset, "description": TRAIN_PRESETS[preset]["description"], "stage": stage.name,
            "resolution": stage.resolution, "micro_batch": micro,
            "accumulation": config.run.gradient_accumulation_steps, "steps": steps,
            "gpu_peak_gib": round(peak / 2**30, 3), "planned_gib": round(planned.gpu_peak_gib, 3),
            "card_gib": CARD_GIB[preset], "under_card": peak / 2**30 < CARD_GIB[preset],
            "s_per_step": round(sum(times[1:]) / max(1, len(times) - 1), 4), "loss_finite": bool(torch.isfinite(loss)),
            "device": torch.cuda.get_device_name(0), "torch": torch.__version__}


def _table(rows: list[dict]) -> str:
    lines = [f"{'preset':<7} {'stage':<14} {'res':>5} {'mb':>3}  {'planned':>8}  {'measured':>8}  {'card':>5}  "
             f"{'s/step':>7}"]
    for r in rows:
        measured = "-" if r.get("gpu_peak_gib") is None else f"{r['gpu_peak_gib']:.1f}"
        speed = "-" if r.get("s_per_step") is None else f"{r['s_per_step']:.2f}"
        lines.append(f"{r['preset']:<7} {r['stage']:<14} {r['resolution']:>5} {r['micro_batch']:>3}  "
                     f"{r['planned_gib']:>8.1f}  {measured:>8}  {r['card_gib']:>5}  {speed:>7}"
                     + (f"  {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=list(CARD_GIB), choices=list(CARD_GIB))
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per measurement (the first is warm-up)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands; no GPU needed")
    p.add_argument("--child", nargs=2, metavar=("PRESET", "STAGE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]), args.steps)), flush=True)
        return 0
    from trainer.config import preset_config
    from trainer.plan import plan_training

    rows = []
    for preset in args.presets:
        plan = plan_training(preset_config(preset), 1)
        for index, stage in enumerate(plan.stages):
            row = {"preset": preset, "stage": stage.name, "resolution": stage.resolution,
                   "micro_batch": stage.micro_batch, "planned_gib": round(stage.gpu_peak_gib, 3),
                   "card_gib": CARD_GIB[preset]}
            cmd = [sys.executable, "-m", "benchmarks.train_gpu", "--child", preset, str(index), "--steps",
                   str(args.steps)]
            if args.dry_run:
                print("would run:", " ".join(cmd[1:]), f"(timeout {args.timeout:g} s)")
                rows.append(row)
                continue
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                if done.returncode == 0 and lines:
                    row = json.loads(lines[-1])
                else:
                    row["error"] = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]
            except subprocess.TimeoutExpired:
                row["error"] = f"timed out after {args.timeout:g} s"
            rows.append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(_table(rows))
    if not args.dry_run:
        print(f"results appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
