"""The memory planner: counts from the real configs, figures against measured peaks, refusal before loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.config import TRAIN_PRESETS, load_config, preset_config
from trainer.plan import plan_training

from .conftest import tiny_config_text

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_full_size_parameter_counts_and_the_80gb_preset_fits():
    plan = plan_training(preset_config("80gb"))
    # released adapter: projector 1,360,116,096 + 57 x 25,172,224 attention K/V = 2,794,932,864
    assert plan.params["image_adapter"] == 2_794_932_864
    assert plan.params["text_adapter"] == 309_246_208  # default sizes: 0.31 B
    assert plan.params["frozen:transformer"] == 11_901_408_320
    assert all(s.fits(80) for s in plan.stages), plan.table()
    s = plan.stages[0]
    # float32 master weights and gradients, AdamW's two float32 states
    assert s.trainable_bytes == s.gradient_bytes == (2_794_932_864 + 309_246_208) * 4
    assert s.optimizer_bytes == (2_794_932_864 + 309_246_208) * 8
    # checkpointing keeps far fewer activations than none
    assert s.activation_bytes == s.activation_bytes_checkpointing < s.activation_bytes_no_checkpointing / 3


@pytest.mark.slow
def test_every_preset_fits_its_card_and_the_full_adapter_does_not_fit_24gb():
    cards = {"24gb": 24, "48gb": 48, "80gb": 80, "multi-gpu": 80}
    for name, card in cards.items():
        plan = plan_training(preset_config(name), TRAIN_PRESETS[name].get("processes", 1))
        assert all(s.fits(card) for s in plan.stages), (name, plan.table())
    lora = plan_training(preset_config("24gb"))
    assert 0 < lora.params["image_adapter_lora"] < 0.1e9
    full = preset_config("24gb")
    full.trainable = ["image_adapter"]
    assert not any(s.fits(24) for s in plan_training(full).stages)
    # sharding divides the trainable state by the processes
    one, eight = plan_training(preset_config("multi-gpu"), 1), plan_training(preset_config("multi-gpu"), 8)
    assert eight.stages[0].optimizer_bytes * 8 == pytest.approx(one.stages[0].optimizer_bytes, rel=1e-6)


def _tiny_config(tmp_path, unpaired, cache, trainable, checkpointing):
    text = tiny_config_text(tmp_path / "out", unpaired, cache, batch=2, trainable=trainable)
    text = text.replace('mixed_precision = "no"', f"mixed_precision = \"no\"\ngradient_checkpointing = "
                                                  f"{str(checkpointing).lower()}")
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize("trainable,checkpointing", [(["image_adapter"], False),
                                                     pytest.param(["image_adapter", "text_adapter"], True,
                                                                  marks=pytest.mark.slow),
                                                     pytest.param(["image_adapter_lora"], True,
                                                                  marks=pytest.mark.slow)])
def test_tiny_plan_matches_the_measured_peak(trainer_home, unpaired_data, encoder_cache, tmp_path, trainable,
                                            checkpointing):
    """The plan's GPU peak against the peak bytes of live tensors measured on the CPU over three optimizer steps
    (trainer.memtrack: every tensor from every operator, forward, backward and optimizer step)."""
    from trainer.data import load_dataset
    from trainer.loop import _load_pipeline
    from trainer.memtrack import LiveTensorBytes
    from trainer.batch import BatchEncoder, EncodingCache
    from trainer.objective import build_training_model

    config = _tiny_config(tmp_path, unpaired_data, encoder_cache, trainable, checkpointing)
    stage = plan_training(config, 1, cuda=False).stages[0]
    pipe = _load_pipeline(config, torch.float32, "cpu")
    model = build_training_model(pipe, config.trainable, config.objective, False, 0, config.part_options())
    if checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    encoder = BatchEncoder(pipe, config.objective, 16, EncodingCache(encoder_cache, ("latents", "text", "features")),
                           0)
    inputs = encoder.encode(load_dataset(unpaired_data)[:2], 64, [(0, 0, 0), (0, 0, 1)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with LiveTensorBytes() as tracker:
        tracker.track(list(model.parameters()) + list(pipe.transformer.parameters())
                      + list(pipe.transformer.buffers()))
        assert tracker.live == stage.frozen_bytes + stage.trainable_bytes  # weights as planned, exactly
        for _ in range(3):
            model(inputs).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    ratio = stage.gpu_peak_bytes / tracker.peak
    print(f"{trainable} checkpointing={checkpointing}: plan {stage.gpu_peak_bytes / 2**20:.1f} MiB, "
          f"measured {tracker.peak / 2**20:.1f} MiB, ratio {ratio:.3f}")
    assert 0.75 <= ratio <= 1.25


def test_a_config_that_cannot_fit_is_refused_before_loading(trainer_home, unpaired_data, tmp_path, monkeypatch):
    import trainer.loop as loop

    def must_not_load(*args, **kwargs):
        raise AssertionError("models were loaded before the plan was checked")

    monkeypatch.setattr(loop, "_load_pipeline", must_not_load)
    config = preset_config("24gb", str(tmp_path / "out"), str(unpaired_data), None)
    config.stages = config.stages[:1]
    config.stages[0].data = "unpaired"
    config.trainable = ["image_adapter"]  # the full 2.79 B adapter: about 37 GiB at 512 in bf16
    config.run.mixed_precision = "no"  # one AcceleratorState per test process (float32 plans even larger)
    with pytest.raises(loop.TrainingRefused) as err:
        loop.Trainer(config, vram_gib=24).run()
    message = str(err.value)
    assert "does not fit a 24 GiB card" in message and "GPU peak" in message and "unpaired-512" in message
    assert "\n" not in message


@pytest.mark.slow
def test_train_plan_command_prints_a_line_per_stage():
    out = subprocess.run([sys.executable, "-m", "trainer", "plan", "--preset", "24gb", "--vram", "24"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if "GPU peak" in line and "GiB" in line]
    assert len(lines) == 3 and all("24 GB" in line for line in lines), out.stdout
    assert "fits a 24 GiB card" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "trainer", "plan"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "give a CONFIG or --preset NAME" in bad.stderr
