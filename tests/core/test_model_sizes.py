"""The stored parameter counts (``assets/configs/model-sizes.json``) are the counts of the modules built on meta."""

import json

from core.loading import model_sizes
from core.loading.model_sizes import BUNDLED_CONFIGS, CONFIG_DIR, _build_on_meta, model_size, size_of_module


def test_the_stored_counts_are_the_meta_built_counts():
    """If this fails, the configs or the libraries' module code changed: run ``python -m core.loading.model_sizes``."""
    for name, (bundled, _) in BUNDLED_CONFIGS.items():
        config = json.loads((CONFIG_DIR / bundled).read_text())
        assert model_size(name) == size_of_module(name, _build_on_meta(name, config), config), name


def test_a_config_not_in_the_file_is_built(tmp_path, monkeypatch):
    built = []
    original = model_sizes._build_on_meta

    def build(name, config):
        built.append(name)
        return original(name, config)

    monkeypatch.setattr(model_sizes, "_build_on_meta", build)
    model_size("vae")  # a bundled config: from the file
    assert built == []
    cfg = json.loads((CONFIG_DIR / "flux1-dev-vae.json").read_text())
    cfg["layers_per_block"] = 1
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps(cfg))
    assert model_size("vae", tmp_path).params < model_size("vae").params
    assert built == ["vae"]
