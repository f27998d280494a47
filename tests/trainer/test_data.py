"""Dataset validation: every kind of bad row is reported with its line number; training refuses bad data."""

from __future__ import annotations

import json

from PIL import Image

from trainer.cli import main
from trainer.data import StageSchedule, validate

from .conftest import make_paired, make_unpaired, tiny_config_text


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_good_datasets(tmp_path):
    unpaired = validate(make_unpaired(tmp_path / "u"))
    assert unpaired.ok and len(unpaired.examples) == 4 and not unpaired.examples[0].paired
    paired = validate(make_paired(tmp_path / "p"), "paired")
    assert paired.ok and len(paired.examples) == 3
    multi = paired.examples[2]
    assert [r.name for r in multi.references] == ["Ann", "Bob"] and multi.references[1].box == (0.5, 0, 1, 1)


def test_each_bad_row_kind_with_line_numbers(tmp_path):
    make_paired(tmp_path)  # ref0.png, target0.png exist
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rows = [
        {"reference": "ref0.png", "target": "target0.png", "caption": "fine"},        # 1 good
        {"reference": "missing.png", "target": "target0.png", "caption": "x"},        # 2 missing file
        {"reference": "ref0.png", "target": "broken.png", "caption": "x"},            # 3 unreadable image
        {"reference": "ref0.png", "target": "target0.png"},                           # 4 missing caption
        {"references": [{"name": "Ann", "image": "ref0.png"}], "target": "target0.png",
         "caption": "[Ann] meets [Zed]"},                                              # 5 tag without reference
        "{not json",                                                                   # 6 not JSON
        {"references": [{"name": "A", "image": "ref0.png"}, {"image": "ref1.png"}],
         "target": "target0.png", "caption": "two"},                                   # 7 unnamed in multi
        {"references": [{"name": "A", "image": "ref0.png", "box": [0.5, 0, 0.2, 1]}],
         "target": "target0.png", "caption": "[A]"},                                   # 8 bad box
        "",                                                                            # 9 blank: skipped
        {"reference": "ref0.png", "target": "target0.png", "caption": "   "},          # 10 empty caption
    ]
    report = validate(_jsonl(tmp_path / "bad.jsonl", rows))
    lines = {p.where: p.message for p in report.problems}
    assert not report.ok and len(report.examples) == 1
    assert "not found" in lines["bad.jsonl:2"]
    assert "unreadable" in lines["bad.jsonl:3"]
    assert "missing caption" in lines["bad.jsonl:4"]
    assert "[Zed] has no reference" in lines["bad.jsonl:5"]
    assert "not valid JSON" in lines["bad.jsonl:6"]
    assert "need a name" in lines["bad.jsonl:7"]
    assert "box" in lines["bad.jsonl:8"]
    assert "empty" in lines["bad.jsonl:10"]
    assert "bad.jsonl:9" not in lines


def test_folder_problems(tmp_path):
    folder = make_unpaired(tmp_path / "u", 3)
    (folder / "char1.txt").unlink()
    (folder / "char2.txt").write_text("  ")
    (folder / "orphan.txt").write_text("no image")
    Image.new("RGB", (8, 8)).save(folder / "tiny.png")
    (folder / "tiny.txt").write_text("too small")
    report = validate(folder)
    where = {p.where: p.message for p in report.problems}
    assert "missing caption" in where["char1.png"] and "empty caption" in where["char2.txt".replace(".txt", ".png")]
    assert "orphan.txt" in where and "at least" in where["tiny.png"]
    assert [e.where for e in report.examples] == ["char0.png"]


def test_cli_validate_and_training_refuses_bad_dataset(tmp_path, capsys):
    folder = make_unpaired(tmp_path / "u", 2)
    (folder / "char1.txt").unlink()
    assert main(["validate", str(folder)]) == 2  # a known failure: status 2, as every trainer command
    assert "char1.png: missing caption" in capsys.readouterr().out
    config = tmp_path / "c.toml"
    config.write_text(tiny_config_text(tmp_path / "out", folder, tmp_path / "cache"))
    assert main([str(config)]) == 2
    err = capsys.readouterr().err
    assert "training refused" in err and "char1.png: missing caption" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_schedule_is_a_function_of_the_step(tmp_path):
    rows = list(range(5))
    schedule = StageSchedule(rows, [], "unpaired", 2, seed=3, stage_index=0)
    first = [schedule.global_batch(s) for s in range(5)]
    assert first == [StageSchedule(rows, [], "unpaired", 2, 3, 0).global_batch(s) for s in range(5)]
    flat = sum(first, [])
    assert sorted(flat[:5]) == rows and sorted(flat[5:10]) == rows  # each epoch sees every row once
