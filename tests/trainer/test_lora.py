"""The 24 GB preset's pieces on the tiny models: LoRA on the image adapter over a quanto-int8 frozen FLUX trains
only the LoRA factors, and exports an ordinary adapter (the updates merged) that the engine loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import load_config

from .conftest import tiny_config_text


@pytest.mark.slow
def test_lora_on_a_quantized_base_trains_and_exports_merged(trainer_home, unpaired_data, encoder_cache, tmp_path):
    from core.loading.sources import ModelSources
    from core.models.pipeline import InstantCharacterPipeline
    from trainer.loop import Trainer

    text = tiny_config_text(tmp_path / "out", unpaired_data, encoder_cache, steps=3, batch=2, lr=1e-2,
                            trainable=["image_adapter_lora"], tables="[lora]\nrank = 4\n")
    text = text.replace('init = "checkpoint"', 'init = "checkpoint"\nbase_quantization = "quanto-int8"')
    path = tmp_path / "config.toml"
    path.write_text(text)
    config = load_config(path)
    trainer = Trainer(config)
    result = trainer.run()
    assert not result.stopped and result.state.global_step == 3
    from optimum.quanto import QLinear

    assert any(isinstance(m, QLinear) for m in trainer.pipe.transformer.modules())  # FLUX's Linears int8
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert not any("lora" in n for n, m in trainer.pipe.transformer.named_modules() if isinstance(m, QLinear))

    exported = load_file(str(config.output_path / "adapter.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in exported)
    base = InstantCharacterPipeline.from_pretrained(ModelSources.parse("tiny"), dtype=torch.float32, progress=False)
    changed = [k for k in exported if k.startswith("ip_adapter.") and not torch.allclose(
        exported[k], base.character_layers.state_dict()[k[len("ip_adapter."):]])]
    assert changed and all(k.endswith(".weight") for k in changed)  # only the K/V weights moved
    assert all(torch.equal(exported[k], base.image_proj.state_dict()[k[len("image_proj."):]])
               for k in exported if k.startswith("image_proj."))  # targets = "attention": the projector is as loaded
    pipe = InstantCharacterPipeline.from_pretrained(ModelSources.parse("tiny"), adapter=str(
        config.output_path / "adapter.safetensors"), dtype=torch.float32, progress=False)
    assert pipe.character_layers is not None
