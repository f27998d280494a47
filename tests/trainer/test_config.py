"""Training config: TOML round trip, presets, and every problem named by its key."""

from __future__ import annotations

import pytest

from trainer.config import TRAIN_PRESETS, ConfigError, TrainConfig, config_from_dict, load_config, preset_config


def test_presets_are_valid_and_round_trip(tmp_path):
    for name in TRAIN_PRESETS:
        config = preset_config(name)
        assert len(config.stages) == 3 and [s.resolution for s in config.stages] == [512, 512, 1024]
        assert len({s.learning_rate for s in config.stages}) == 1 and config.trainable
        path = config.save(tmp_path / f"{name}.toml")
        again = load_config(path)
        assert again.to_dict() == config.to_dict()


def test_every_problem_is_listed_with_its_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("""
seed = -1
trainable = ["image_adapter", "lora"]
[run]
mixed_precision = "fp8"
gradient_accumulation_steps = 2
colour = "blue"
[[stages]]
data = "paired"
resolution = 500
batch_size = 3
steps = 0
learning_rate = 2.0
""")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    # unknown keys are reported before the values are checked
    assert any(p.startswith("run.colour: unknown key") for p in err.value.problems)
    path.write_text(path.read_text().replace('colour = "blue"\n', ""))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = "\n".join(err.value.problems)
    for key in ("seed", "trainable", "run.mixed_precision", "stages[0].resolution", "stages[0].batch_size",
                "stages[0].steps", "stages[0].learning_rate", "data.paired"):
        assert f"{key}:" in text, key


def test_batch_must_split_over_processes():
    config = config_from_dict({"data": {"unpaired": "x"}, "stages": [{"batch_size": 6, "steps": 1}]})
    config.check(num_processes=2)
    with pytest.raises(ConfigError, match="not divisible"):
        config.check(num_processes=4)
    assert config.micro_batch(config.stages[0], 2) == 3


def test_type_errors_and_not_toml(tmp_path):
    with pytest.raises(ConfigError, match="run.gradient_checkpointing: must be true or false"):
        config_from_dict({"run": {"gradient_checkpointing": "yes"}})
    bad = tmp_path / "x.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    assert TrainConfig().to_toml().startswith("output_dir")


def test_cli_init_config(tmp_path, capsys):
    from trainer.cli import main

    assert main(["init-config", str(tmp_path / "job.toml"), "--preset", "80gb"]) == 0
    config = load_config(tmp_path / "job.toml")
    assert [s.steps for s in config.stages] == [2000, 500, 500] and config.run.gradient_checkpointing
    assert main(["init-config", str(tmp_path / "x.toml"), "--preset", "12gb"]) == 2
    assert "unknown '12gb'" in capsys.readouterr().err


def test_text_adapter_and_validation_keys():
    base = {"trainable": ["image_adapter", "text_adapter"], "data": {"unpaired": "x"}, "stages": [{"steps": 1}]}
    config = config_from_dict({**base, "models": {"text_adapter": "t.safetensors"},
                               "text_adapter": {"dim": 64, "depth": 1, "num_queries": 4, "token_dim": 32},
                               "validation": {"every": 100, "data": "held-out", "clip_model": "clip",
                                              "dino_model": "", "segmenter": "threshold", "steps": 8, "size": 256}})
    config.check()
    assert config.part_options()["text_adapter"] == {"dim": 64, "depth": 1, "num_queries": 4, "token_dim": 32}
    assert config_from_dict(config.to_dict()).to_dict() == config.to_dict()
    bad = config_from_dict({**base, "text_adapter": {"dim": 100, "depth": 0},
                            "validation": {"every": 5, "clip_model": "", "dino_model": "", "segmenter": "birefnet",
                                           "size": 100, "steps": 0}})
    text = "\n".join(bad.problems())
    for key in ("text_adapter.dim", "text_adapter.depth", "validation.data", "validation.clip_model/dino_model",
                "validation.segmenter", "validation.size", "validation.steps"):
        assert f"{key}:" in text, key
    assert config_from_dict({**base, "validation": {"every": 0, "size": 100}}).problems() == []  # off: unchecked


def test_sample_seeds_follow_the_seed_rule():
    """``sampling.seeds`` are checked by core.limits' seed rule (a bool or an out-of-range seed is refused)."""
    base = {"trainable": ["image_adapter"], "data": {"unpaired": "x"}, "stages": [{"steps": 1}]}
    for seeds, message in (([True], "sampling.seeds: seed must be a whole number from 0 to 4294967295, got True"),
                           ([2**32], "sampling.seeds: seed must be from 0 to 4294967295, got 4294967296"),
                           ([], "sampling.seeds: give a list of seeds")):
        problems = config_from_dict({**base, "sampling": {"every": 1, "prompts": ["a cat"], "seeds": seeds}}).problems()
        assert message in problems, problems
    assert config_from_dict({**base, "sampling": {"every": 1, "prompts": ["a cat"], "seeds": [0, 7]}}).problems() == []
