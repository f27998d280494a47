"""Command line of the trainer: ``instantcharacter-studio train ...`` and ``python -m trainer ...``.

    train CONFIG [--resume] [--max-steps N]    run a training job (also under torchrun / accelerate launch)
    train validate DATASET [--kind paired]     list every bad row of a dataset
    train init-config OUT [--preset 24gb]      write a starting config for a card size
    train plan CONFIG | --preset NAME          GPU and RAM peak per stage, and the card each fits
    train export CHECKPOINT_DIR OUT [--bin]    export the adapter of a checkpoint
    train pairs OUT --models tiny ...          build a multi-character paired dataset (paper 3.3)
    train stop|save-now OUTPUT_DIR             ask a running job to stop / save a checkpoint now

Known failures print one line (or the list of bad rows) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.loading.library_notes import filter_library_notes

COMMANDS = ("validate", "init-config", "plan", "export", "pairs", "stop", "save-now")


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instantcharacter-studio train",
                                description="Train the InstantCharacter adapter from a TOML config. Other commands: "
                                            + ", ".join(COMMANDS))
    p.add_argument("config", help="training config (TOML)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop (with a checkpoint) after this many optimizer steps in this call")
    p.add_argument("--vram", type=float, default=None,
                   help="plan for a card of this many GiB (default: the detected CUDA card; none on the CPU)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def _command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="instantcharacter-studio train")
    p.add_argument("--debug", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a dataset and list every bad row")
    v.add_argument("dataset", help="folder with .txt captions, a JSONL file, or a training config (.toml): the "
                                   "datasets its stages use")
    v.add_argument("--kind", choices=("paired", "unpaired"), default=None)
    v.add_argument("--no-decode", action="store_true", help="check files exist without decoding images")
    i = sub.add_parser("init-config", help="write a starting config")
    i.add_argument("out")
    i.add_argument("--preset", default="24gb", help="24gb, 48gb, 80gb or multi-gpu (see train plan --preset)")
    pl = sub.add_parser("plan", help="GPU and RAM peak of each stage, from the component configs (no weights)")
    pl.add_argument("config", nargs="?", default=None, help="training config (TOML)")
    pl.add_argument("--preset", default=None, help="plan a preset instead of a config")
    pl.add_argument("--processes", type=int, default=None,
                    help="processes (GPUs) to plan for (default: the preset's, else 1)")
    pl.add_argument("--vram", type=float, default=None, help="also check against a card of this many GiB")
    pl.add_argument("--cpu", action="store_true", help="plan what the trainer does on the CPU (no bitsandbytes)")
    i.add_argument("--output-dir", default="runs/instantcharacter")
    i.add_argument("--unpaired", default="data/unpaired")
    i.add_argument("--paired", default="data/paired.jsonl")
    e = sub.add_parser("export", help="export the adapter of a checkpoint")
    e.add_argument("checkpoint", help="a checkpoint folder, or an output_dir (its latest checkpoint)")
    e.add_argument("out", help="output path without suffix, e.g. my-adapter")
    e.add_argument("--config", required=True, help="the run's config (to rebuild the trainable modules)")
    e.add_argument("--bin", action="store_true", help="also write the released .bin layout")
    pr = sub.add_parser("pairs", help="build a multi-character paired dataset (paper section 3.3)")
    pr.add_argument("out", help="output folder (dataset.jsonl and images)")
    pr.add_argument("--models", default="default", help="'default', 'tiny' or a models directory")
    pr.add_argument("--names", nargs="+", default=["A", "B"], help="character names")
    pr.add_argument("--descriptions", nargs="+", default=None, help="words for each character")
    pr.add_argument("--count", type=int, default=4, help="multi-character images to make")
    pr.add_argument("--views", type=int, default=2, help="new-scene images per character")
    pr.add_argument("--resolution", type=int, default=512)
    pr.add_argument("--steps", type=int, default=28)
    pr.add_argument("--segmenter", default="threshold", help="'threshold' or 'birefnet'")
    pr.add_argument("--trust-remote-code", action="store_true", help="allow BiRefNet's hub code to run")
    for name in ("stop", "save-now"):
        c = sub.add_parser(name, help=f"ask a running job to {name.replace('-', ' ')}")
        c.add_argument("output_dir")
    return p


def _validate(args) -> int:
    """Checks a dataset, or every dataset a training config (``.toml``) names; status 2 when any has bad rows."""
    from .data import validate

    if Path(args.dataset).suffix.lower() == ".toml":
        from .config import load_config

        config = load_config(args.dataset)
        used = {kind for s in config.stages for kind in (("unpaired", "paired") if s.data == "both" else (s.data,))}
        datasets = [(config.resolve(getattr(config.data, kind)), kind) for kind in ("unpaired", "paired")
                    if kind in used]
        if config.validation.every and config.validation.data:
            datasets.append((config.resolve(config.validation.data), None))
    else:
        datasets = [(args.dataset, args.kind)]
    ok = True
    for dataset, kind in datasets:
        report = validate(dataset, kind, check_images=not args.no_decode)
        print(report.summary())
        ok = ok and report.ok
    return 0 if ok else 2


def _init_config(args) -> int:
    from .config import preset_config

    config = preset_config(args.preset, args.output_dir, args.unpaired, args.paired)
    config.save(args.out)
    print(f"wrote {args.out} ({args.preset} preset, {config.total_steps} steps in {len(config.stages)} stages)")
    return 0


def _plan(args) -> int:
    from .config import TRAIN_PRESETS, ConfigError, load_config, preset_config
    from .plan import GiB, fits, plan_training

    if (args.config is None) == (args.preset is None):
        raise ConfigError(["give a CONFIG or --preset NAME (not both)"], "train plan")
    if args.preset is not None:
        config = preset_config(args.preset)
        processes = args.processes or TRAIN_PRESETS[args.preset].get("processes", 1)
        title = f"preset {args.preset}: {TRAIN_PRESETS[args.preset]['description']}"
    else:
        processes = args.processes or 1
        config = load_config(args.config, processes)
        title = str(args.config)
    if processes < 1:
        raise ConfigError([f"--processes: {processes}: must be at least 1"], "train plan")
    plan = plan_training(config, processes, cuda=not args.cpu)
    print(title)
    print(plan.table())
    if args.vram is not None:
        ok = all(fits(s.gpu_peak_bytes, args.vram) for s in plan.stages)
        print(f"{'fits' if ok else 'does NOT fit'} a {args.vram:g} GiB card (peak {plan.gpu_peak_bytes / GiB:.1f} GiB)")
        return 0 if ok else 1
    return 0


def _export(args) -> int:
    import torch

    from .checkpoints import export_adapter, latest_checkpoint, load_trainable
    from .config import load_config
    from .loop import _load_pipeline, source_adapter
    from .objective import build_training_model

    config = load_config(args.config)
    folder = Path(args.checkpoint)
    if not (folder / "state.json").is_file():
        found = latest_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {folder}")
        folder = found
    pipe = _load_pipeline(config, torch.float32, "cpu")
    model = build_training_model(pipe, config.trainable, config.objective, config.models.init == "fresh", config.seed,
                                 config.part_options())
    load_trainable(folder, model)
    source = source_adapter(config) if "image_adapter_lora" in model.parts else None
    for path in export_adapter(args.out, model, {"source": folder.name}, args.bin, source):
        print(path)
    return 0


def _pairs(args) -> int:
    from .pairs import MultiCharacterPairBuilder, make_segmenter

    segmenter = make_segmenter(args.segmenter, trust_remote_code=args.trust_remote_code)
    builder = MultiCharacterPairBuilder.from_models(args.models, segmenter, resolution=args.resolution,
                                                   steps=args.steps)
    path = builder.build(args.out, args.names, args.descriptions, count=args.count, views=args.views)
    print(f"wrote {path}")
    return 0


def _control(args) -> int:
    from .events import request

    print(f"requested: {request(args.output_dir, args.command)}")
    return 0


def _train(args) -> int:
    import os

    from .config import load_config

    # typos are reported before torch and diffusers load (tens of seconds); torchrun and accelerate launch set
    # WORLD_SIZE, which the batch checks need
    load_config(args.config, int(os.environ.get("WORLD_SIZE", "1") or 1))
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # per-caption truncation notes would drown the progress
    import torch
    from accelerate import PartialState

    from .loop import Trainer
    from .progress import TerminalProgress

    # the first PartialState fixes the process group for the run: on the CPU it must ask for gloo explicitly
    state = PartialState(cpu=not torch.cuda.is_available())
    config = load_config(args.config, state.num_processes)
    trainer = Trainer(config, resume=args.resume, vram_gib=args.vram,
                      listeners=[TerminalProgress()] if state.is_main_process else [])
    with _first_interrupt_stops(trainer, state.is_main_process):
        result = trainer.run(args.max_steps)
    if result.state and state.is_main_process:
        what = "stopped" if result.stopped else "finished"
        print(f"{what} at step {result.state.global_step} of {config.total_steps}; " + (
            f"adapter: {result.exported[0]}" if result.exported else f"checkpoints in {config.output_path}"))
        if result.stopped:
            print(f"resume with: instantcharacter-studio train {args.config} --resume")
    return 130 if trainer.stop_asked and result.stopped else 0


class _first_interrupt_stops:
    """Ctrl-C while training asks ``trainer`` to stop at the end of the current step with a checkpoint; a second
    Ctrl-C (or one before the first step) stops at once, as Python's default does."""

    def __init__(self, trainer, talk: bool):
        self.trainer, self.talk = trainer, talk

    def _handle(self, signum, frame):
        import signal

        if not self.trainer.stepping or self.trainer.stop_asked:
            signal.signal(signal.SIGINT, self.previous)
            raise KeyboardInterrupt
        self.trainer.ask_stop()
        if self.talk:
            print("\nCtrl-C: saving a checkpoint at the end of this step (Ctrl-C again to stop at once)", flush=True)

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` is what follows ``train`` on the studio's command line."""
    filter_library_notes()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        args = _command_parser().parse_args(argv)
        handler = {"validate": _validate, "init-config": _init_config, "plan": _plan, "export": _export,
                   "pairs": _pairs, "stop": _control, "save-now": _control}[args.command]
    else:
        args = _train_parser().parse_args(argv)
        handler = _train
    try:
        return handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted: nothing saved since the last checkpoint" + (
            f" (resume from it with: instantcharacter-studio train {args.config} --resume)"
            if handler is _train else ""), file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, PermissionError, OSError) as exc:
        if args.debug:
            raise
        text = str(exc).strip() or type(exc).__name__
        print(f"error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
