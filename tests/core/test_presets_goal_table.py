"""Issue 12's goal table: for every box people own, ``auto`` picks a preset that fits both budgets and has the
weights the table asks for (FLUX.1-dev + InstantCharacter, 1024x1024, one character)."""

from __future__ import annotations

import pytest

from app.bench_commands import main as bench_main
from core.loading.memory import GiB, choose_preset, usable_vram_bytes

EIGHT_BIT = {"fp8-layerwise", "quanto-int8", "quanto-fp8", "bnb-int8"}
FOUR_BIT = {"bnb-nf4"}


def _streamed(preset) -> bool:
    return preset.offload in ("group", "disk")


# card GiB, RAM GiB, what the "with" column asks of the chosen preset
GOAL_TABLE = [
    (8, 16, lambda p: p.transformer_quantization in FOUR_BIT or _streamed(p)),
    (12, 16, lambda p: True),
    (16, 32, lambda p: p.transformer_quantization in EIGHT_BIT),
    (24, 32, lambda p: p.transformer_quantization in EIGHT_BIT | {None} and p.transformer_quantization not in FOUR_BIT),
    (48, 64, lambda p: p.name == "full"),
]


@pytest.mark.parametrize("card, ram, meets", GOAL_TABLE, ids=[f"{c}GB-{r}GB" for c, r, _ in GOAL_TABLE])
@pytest.mark.parametrize("bitsandbytes_ok", [True, False])
def test_auto_fits_every_box_of_the_goal_table(card, ram, meets, bitsandbytes_ok):
    preset, e, reason = choose_preset(card * GiB, ram * GiB, 1024, 1024, bitsandbytes_ok=bitsandbytes_ok)
    assert "nothing fits" not in reason, reason
    assert e.gpu_peak_bytes <= usable_vram_bytes(card * GiB), reason
    assert e.ram_needed_bytes <= ram * GiB, reason
    assert meets(preset), f"{card}/{ram}: {preset}"


def test_no_box_gets_four_bit_weights_when_8_bit_fits():
    for card, ram in ((16, 32), (24, 32), (24, 64)):
        preset, _, reason = choose_preset(card * GiB, ram * GiB)
        assert preset.transformer_quantization not in FOUR_BIT, reason


@pytest.mark.parametrize("card, ram, chosen", [(8, 16, "streamed"), (12, 16, "streamed"), (16, 32, "fp8-streamed"),
                                               (24, 32, "fp8"), (48, 64, "full")])
def test_plan_command_prints_the_choice_for_each_box(card, ram, chosen, capsys):
    assert bench_main(["plan", "--vram", str(card), "--ram", str(ram)]) == 0
    out = capsys.readouterr().out
    assert f"auto -> {chosen}:" in out
    assert "RAM need" in out and "RAM peak" in out


def test_plan_reads_a_gguf_files_real_size(tmp_path, capsys):
    import gguf
    import numpy as np

    path = tmp_path / "flux1-dev-Q4_0.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    weight = np.zeros((64, 64), dtype=np.float32)
    writer.add_tensor("double_blocks.0.img_attn.qkv.weight", gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q4_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert bench_main(["plan", "--vram", "24", "--ram", "32", "--base", str(path)]) == 0
    out = capsys.readouterr().out
    assert "transformer flux1-dev-Q4_0.gguf" in out
    # a 2.3 KB "transformer": full's GPU peak drops by the bf16 transformer's 22 GiB
    fields = next(line.lstrip("* ").split() for line in out.splitlines() if line.lstrip("* ").startswith("full "))
    assert fields[0] == "full" and float(fields[1]) < 25
