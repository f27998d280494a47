"""Training checkpoints (exact resume) and adapter export.

A checkpoint is a folder ``output_dir/checkpoints/step-00001234/`` holding

* ``trainable.safetensors``: the trainable parts' weights (float32);
* ``optimizer.pt``: the optimizer state (read back with ``torch.load(weights_only=True)``);
* ``scheduler.json``: the learning-rate scheduler state;
* ``rng-rank<r>.json``: each process's Python, NumPy and torch (CPU and CUDA) generator states;
* ``state.json``: where training stands (global step, stage, step within the stage: the data position), written
  last.

It is assembled in a hidden staging folder and renamed into place in one step, so a crash (even ``kill -9``)
leaves either the previous checkpoints or the complete new one. Only the last ``keep`` are kept.

Under DDP every process holds the same weights and optimizer state, so the main process writes them once. Under
FSDP (``run.distributed = "fsdp"``) each process writes its shards to ``sharded/`` instead of ``optimizer.pt``
(``torch.distributed.checkpoint``), and the main process the gathered ``trainable.safetensors``.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core.io.paths import atomic_path
from core.errors import UsageError

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"


@dataclass
class TrainingState:
    """Where training stands. ``stage_step`` steps of stage ``stage_index`` are done (0-based stage)."""

    global_step: int = 0
    stage_index: int = 0
    stage_step: int = 0
    config_digest: str = ""
    losses: list[float] = field(default_factory=list)  # recent losses, for the studio's plot after a resume

    @classmethod
    def read(cls, folder: Path) -> "TrainingState":
        data = json.loads((Path(folder) / STATE_FILE).read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict:
    state = {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# ---------------------------------------------------------------------- save / load
def _write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def save_checkpoint(accelerator, output_dir: str | Path, state: TrainingState, model, optimizer, scheduler,
                    keep: int, sharded: bool = False) -> Path:
    """Writes a checkpoint from every process (collective: all processes must call it) and prunes old ones.

    ``sharded`` (FSDP, :mod:`trainer.sharding`): every process writes its shards of the weights and optimizer
    state to ``sharded/`` (torch.distributed.checkpoint) and the main process the gathered weights.
    """
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.global_step:08d}"
    staging = root / f".staging-step-{state.global_step:08d}"
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    _write_json(staging / f"rng-rank{accelerator.process_index}.json", rng_state())
    if sharded:
        from .sharding import full_state_dict, save_sharded

        save_sharded(staging, model, optimizer.optimizer)
        weights = full_state_dict(model)
        if accelerator.is_main_process:
            save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(staging / "trainable.safetensors"))
    if accelerator.is_main_process:
        if not sharded:
            unwrapped = accelerator.unwrap_model(model)
            save_file({k: v.detach().contiguous().cpu() for k, v in unwrapped.state_dict().items()},
                      str(staging / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        _write_json(staging / "scheduler.json", sched)
        _write_json(staging / STATE_FILE, asdict(state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_trainable(folder: str | Path, model) -> None:
    """Loads ``trainable.safetensors`` into the (unwrapped) training model, strictly."""
    weights = load_file(str(Path(folder) / "trainable.safetensors"))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise UsageError(f"{folder}: checkpoint does not fit this config's trainable modules "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(weights, strict=True)


def load_checkpoint(accelerator, folder: str | Path, model, optimizer, scheduler,
                    sharded: bool = False) -> TrainingState:
    """Restores weights, optimizer, scheduler and this process's RNG from ``folder``.

    ``sharded``: from the ``sharded/`` shards (a sharded checkpoint is read by a sharded run on any number of
    processes). Collective then.
    """
    folder = Path(folder)
    if sharded:
        from .sharding import SHARDED_DIR, load_sharded

        if not (folder / SHARDED_DIR).is_dir():
            raise UsageError(f"{folder}: not a sharded checkpoint (written by run.distributed = \"ddp\" or one "
                             "process); resume it with the same setting")
        load_sharded(folder, model, optimizer.optimizer)
    else:
        if not (folder / "optimizer.pt").is_file():
            raise UsageError(f"{folder}: a sharded checkpoint (run.distributed = \"fsdp\" on several processes); "
                             "resume it the same way")
        load_trainable(folder, accelerator.unwrap_model(model))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    sched = json.loads((folder / "scheduler.json").read_text())
    sched["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(sched)
    rng_file = folder / f"rng-rank{accelerator.process_index}.json"
    if rng_file.is_file():  # absent when resuming with more processes than wrote it: rows' noise is per row anyway
        set_rng_state(json.loads(rng_file.read_text()))
    return TrainingState.read(folder)


# ---------------------------------------------------------------------- export
def export_adapter(output: str | Path, model, metadata: dict | None = None, released_bin: bool = False,
                   source_adapter: str | Path | None = None) -> list[Path]:
    """Writes the trained adapter for the engine: ``<output>.safetensors`` + ``<output>.json``.

    ``output`` is a path without suffix (e.g. ``run/adapter``). With ``released_bin`` also ``<output>.bin`` in the
    released layout (``torch.save({"image_proj": ..., "ip_adapter": ...})``). Parts other than the image adapter
    are written as ``<output>.<part>.safetensors``: the text adapter in :meth:`core.models.text_adapter.TextAdapter.save`'s
    format (with its ``<output>.text_adapter.json`` config), which ``InstantCharacterPipeline.from_pretrained(...,
    text_adapter=PATH)`` and the CLI's ``--text-adapter`` read. ``source_adapter``: the adapter file a LoRA run
    started from, whose frozen weights the export keeps as they are there (see ``LoraImageAdapterPart``).
    """
    from core.loading.checkpoint import infer_config, read_adapter, save_adapter

    output = Path(output)
    written = []
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    info = {"format": "instantcharacter", "metadata": meta}
    for name, part in model.parts.items():
        raw = (part.export_groups(read_adapter(source_adapter) if source_adapter else None)
               if name == "image_adapter_lora" else part.export_groups())
        groups = {g: {k: v.detach().float().cpu() for k, v in sd.items()} for g, sd in raw.items()}
        if name in ("image_adapter", "image_adapter_lora"):  # LoRA exports merged: an ordinary adapter
            path = output.with_suffix(".safetensors")
            save_adapter(path, groups["image_proj"], groups["ip_adapter"], meta)
            config = infer_config(groups["image_proj"], groups["ip_adapter"], str(path))
            info["image_adapter"] = {"file": path.name, "projector": config.projector.to_dict(),
                                     "num_attention_layers": config.num_attention_layers,
                                     "attention_width": config.attention_width, "head_dim": config.head_dim,
                                     "token_dim": config.token_dim}
            written.append(path)
            if released_bin:
                bin_path = output.with_suffix(".bin")
                with atomic_path(bin_path) as tmp:
                    torch.save({"image_proj": groups["image_proj"], "ip_adapter": groups["ip_adapter"]}, tmp)
                written.append(bin_path)
        else:
            path = output.parent / f"{output.name}.{name}.safetensors"
            files = part.export(path, meta)
            if files is not None:  # the part's own engine format (the text adapter: TextAdapter.save)
                info[name] = {"file": path.name}
                written += files
                continue
            flat = {f"{g}.{k}": v.contiguous() for g, sd in groups.items() for k, v in sd.items()}
            with atomic_path(path) as tmp:
                save_file(flat, str(tmp), metadata={"format": f"instantcharacter-{name}", **meta})
            info[name] = {"file": path.name}
            written.append(path)
    json_path = output.with_suffix(".json")
    _write_json(json_path, info)
    written.append(json_path)
    return written


def latest_export(runs_dir: str | Path) -> Path | None:
    """The newest ``adapter.safetensors`` a run under ``runs_dir`` exported (``runs_dir/NAME/adapter.safetensors``,
    one or two folders down), or None."""
    runs_dir = Path(runs_dir)
    found = [p for pattern in ("*/adapter.safetensors", "*/*/adapter.safetensors") for p in runs_dir.glob(pattern)
             if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)
