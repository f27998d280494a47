"""The benchmark format, runner (resume, outputs), statistics and run comparison, with the engine on a fake
pipeline."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from core.evaluation import (
    BenchmarkFormatError,
    RenderSettings,
    compare_command,
    compare_runs,
    eval_command,
    load_benchmark,
    run_benchmark,
)
from core.evaluation.stats import mean_interval, paired_t_test, student_t_cdf, student_t_ppf
from tests.core.fake_engine import fake_engine
from tests.core.metric_models import single_torch_thread, tiny_metric_models, tiny_scorer  # noqa: F401 (fixtures)

EXAMPLE = Path(__file__).resolve().parents[2] / "assets" / "benchmarks" / "example"
SETTINGS = RenderSettings(steps=2, guidance=3.5, width=64, height=64, scale=0.9)


class FakePipe:
    """Pastes each character's reference on a background whose colour depends on the prompt and seed."""

    def __init__(self, shift: int = 0, fail_on: str | None = None, interrupt_after: int | None = None):
        self.calls: list[tuple[str, int]] = []
        self.shift, self.fail_on, self.interrupt_after = shift, fail_on, interrupt_after

    def __call__(self, prompt, characters, num_inference_steps, guidance_scale, height, width, generator, output_type,
                 **kwargs):
        assert output_type == "pil" and num_inference_steps == SETTINGS.steps
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        seed = generator.initial_seed()
        self.calls.append((prompt, seed))
        if self.fail_on and self.fail_on in prompt:
            raise RuntimeError("CUDA out of memory\n(details on a second line)")
        digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
        image = Image.new("RGB", (width, height), tuple(digest[:3]))
        slot = width // max(1, len(characters))
        for index, character in enumerate(characters):
            side = max(4, slot - 8 - self.shift)
            image.paste(character.image.resize((side, side)), (index * slot + 4, (height - side) // 2))
        return SimpleNamespace(images=[image], notes=[])

    def load_text_adapter(self, path):
        self.text_adapter = path

    def unload_text_adapter(self):
        self.text_adapter = None


def run(tmp_path, pipe, scorer, name="run", **kwargs):
    """Runs the example benchmark with the engine on ``pipe`` (a FakePipe; ``None``: no engine)."""
    engine = fake_engine(pipe) if pipe is not None else None
    return run_benchmark(EXAMPLE, engine, scorer, tmp_path / name, settings=SETTINGS, **kwargs)


def test_example_benchmark_loads():
    bench = load_benchmark(EXAMPLE)
    assert sorted(bench.characters) == ["Leaf", "Ruby", "Sky"]
    assert len(bench.cases) == 11 and len({case.id for case in bench.cases}) == 11
    duo = bench.cases[-1]
    assert duo.masks == ("left", "right")
    assert "[" not in bench.text_prompt(duo) and "green triangle" in bench.text_prompt(duo)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"characters": ["Ruby"], "prompt": "x"', "invalid JSON"),
        ('["Ruby"]', "expected a JSON object"),
        ('{"characters": ["Bob"], "prompt": "[Bob] runs"}', "unknown character 'Bob' (known: Leaf, Ruby, Sky)"),
        ('{"characters": ["Ruby"], "prompt": "[Sky] runs"}', "the prompt names [Sky]"),
        ('{"characters": ["Ruby"], "prompt": "x", "sed": 3}', "unknown key 'sed'"),
        ('{"characters": [], "prompt": "x"}', "'characters' must be a non-empty list"),
        ('{"characters": ["Ruby"], "prompt": ""}', "'prompt' must be a non-empty string"),
        ('{"characters": ["Ruby"], "prompt": "x", "seed": -1}', "'seed' must be a non-negative integer"),
        ('{"characters": ["Ruby", "Sky"], "prompt": "x", "masks": ["left"]}', "one entry per character"),
        ('{"characters": ["Ruby"], "prompt": "x", "masks": ["middle"]}', "unknown layout 'middle'"),
        ('{"characters": ["Ruby"], "prompt": "x", "masks": [[0.5, 0, 0.2, 1]]}', "box [0.5, 0, 0.2, 1]"),
        ('{"characters": ["Ruby"], "prompt": "x", "masks": ["masks/none.png"]}', "mask image masks/none.png not found"),
        ('{"id": "ruby-1", "characters": ["Ruby"], "prompt": "x"}', "id 'ruby-1' already used on line 2"),
    ],
)
def test_bad_case_lines_name_their_line(tmp_path, line, message):
    bench = tmp_path / "bench"
    shutil.copytree(EXAMPLE, bench)
    lines = (bench / "cases.jsonl").read_text().splitlines()
    lines.insert(4, line)  # becomes line 5
    (bench / "cases.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchmarkFormatError) as error:
        load_benchmark(bench)
    text = str(error.value)
    assert text.startswith(("cases.jsonl line 5: ", "cases.jsonl line 5, ")) and message in text and "\n" not in text


def test_bad_benchmark_folders(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="benchmark folder not found"):
        load_benchmark(tmp_path / "nothing")
    bench = tmp_path / "bench"
    shutil.copytree(EXAMPLE, bench)
    (bench / "characters" / "sky.png").write_bytes(b"not a png")
    with pytest.raises(BenchmarkFormatError, match="character 'Sky'.*not a readable image"):
        load_benchmark(bench)
    (bench / "characters.json").write_text('{"Ruby": {"image": "ruby.png",}}')
    with pytest.raises(BenchmarkFormatError, match="characters.json line 1: invalid JSON"):
        load_benchmark(bench)


def test_characters_without_index_use_file_stems(tmp_path):
    bench = tmp_path / "bench"
    (bench / "characters").mkdir(parents=True)
    shutil.copy(EXAMPLE / "characters" / "ruby.png", bench / "characters" / "Momo.png")
    (bench / "cases.jsonl").write_text('{"characters": ["momo"], "prompt": "[MOMO] jumps"}\n')
    loaded = load_benchmark(bench)
    assert loaded.cases[0].characters == ("Momo",) and loaded.cases[0].id == "case-001"
    assert loaded.text_prompt(loaded.cases[0]) == "Momo jumps"


def test_run_writes_csv_json_html_and_resumes(tmp_path, tiny_scorer):
    pipe = FakePipe()
    progress = []
    first = run(tmp_path, pipe, tiny_scorer, progress=lambda done, total, message: progress.append((done, total)))
    assert len(pipe.calls) == 11 and first.rendered == 11 and first.scored == 11
    assert progress[:11] == [(n, 11) for n in range(1, 12)]
    assert ("[Ruby] reading a book in a cozy library", 1) in pipe.calls

    with open(first.files["scores.csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 11 and {"clip_i", "dino_i", "clip_t"} <= set(rows[0])
    assert all(-1 <= float(row[name]) <= 1 for row in rows for name in ("clip_i", "dino_i", "clip_t"))
    data = json.loads(first.files["scores.json"].read_text())
    assert data["metrics"] == ["clip_i", "dino_i", "clip_t"] and len(data["cases"]) == 11
    assert len(data["cases"][-1]["per_character"]) == 2
    for name in data["metrics"]:
        stats = data["summary"][name]
        assert stats["n"] == 11 and stats["ci95_low"] <= stats["mean"] <= stats["ci95_high"]
    report = first.files["report.html"].read_text()
    assert report.count("data:image/png;base64,") >= 11 + 3 and "<svg" in report and "http" not in report.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "clip_i" in first.files["summary.txt"].read_text()

    again = run(tmp_path, pipe, tiny_scorer)
    assert len(pipe.calls) == 11 and again.rendered == 0 and again.reused == 11 and again.scored == 0
    assert json.loads(again.files["scores.json"].read_text())["summary"] == data["summary"]

    # a changed case is the only one rendered again
    bench = tmp_path / "bench"
    shutil.copytree(EXAMPLE, bench)
    text = (bench / "cases.jsonl").read_text().replace("cozy library", "noisy library", 1)
    (bench / "cases.jsonl").write_text(text)
    changed = run_benchmark(bench, fake_engine(pipe), tiny_scorer, tmp_path / "run", settings=SETTINGS)
    assert changed.rendered == 1 and changed.scored == 1 and pipe.calls[-1] == ("[Ruby] reading a book in a noisy library", 1)


def test_interrupted_and_failed_renders(tmp_path, tiny_scorer):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, FakePipe(interrupt_after=4), tiny_scorer)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert len(manifest["cases"]) == 4 and not list((tmp_path / "run" / "images").glob(".*.tmp"))

    pipe = FakePipe(fail_on="snowy forest")
    resumed = run(tmp_path, pipe, tiny_scorer)
    # ruby-3 (a snowy forest too) was rendered before the interruption: only sky-3 and leaf-3 fail
    assert len(pipe.calls) == 7 and resumed.reused == 4 and resumed.failed == 2
    failed = [row for row in resumed.rows if row["status"] == "failed"]
    assert [row["id"] for row in failed] == ["sky-3", "leaf-3"] and failed[0]["error"] == "RuntimeError: CUDA out of memory" and failed[0]["clip_i"] is None
    assert resumed.summary["clip_i"]["n"] == 9
    assert "2 of 11 cases failed" in resumed.summary_text

    retry = FakePipe()
    finished = run(tmp_path, retry, tiny_scorer)
    assert len(retry.calls) == 2 and finished.failed == 0 and finished.summary["clip_i"]["n"] == 11


def test_render_then_score_in_two_phases(tmp_path, tiny_scorer):
    rendered = run(tmp_path, FakePipe(), None)
    assert rendered.metrics == () and rendered.scored == 0
    scored = run(tmp_path, None, tiny_scorer)
    assert scored.reused == 11 and scored.scored == 11 and scored.summary["dino_i"]["n"] == 11
    with pytest.raises(ValueError, match="no engine"):
        run(tmp_path, None, tiny_scorer, name="empty")


def test_compare_prints_per_metric_deltas(tmp_path, tiny_scorer):
    run(tmp_path, FakePipe(), tiny_scorer, name="a")
    run(tmp_path, FakePipe(shift=12), tiny_scorer, name="b", label="smaller characters")
    text = compare_runs(tmp_path / "a", tmp_path / "b", html_path=tmp_path / "compare.html")
    assert "11 paired case(s)" in text and "label: A=None B=smaller characters" in text
    for name in ("clip_i", "dino_i", "clip_t"):
        line = next(line for line in text.splitlines() if line.startswith(name))
        assert len(line.split()) == 9  # metric n A B delta [low, high] t p
    html = (tmp_path / "compare.html").read_text()
    assert "<svg" in html and "clip_i" in html
    same = compare_command(tmp_path / "a", tmp_path / "a", html=tmp_path / "same.html")
    clip_line = next(line for line in same.splitlines() if line.startswith("clip_i"))
    assert "+0.0000" in clip_line and clip_line.split()[-1] == "1.000"


def test_eval_command_returns_summary_text(tmp_path, tiny_scorer):
    printed = []
    text = eval_command(EXAMPLE, tmp_path / "out", fake_engine(FakePipe()), scorer=tiny_scorer, settings=SETTINGS,
                        echo=printed.append, label="tiny")
    assert printed[0] == "[1/11] ruby-1: rendered"
    assert text.splitlines()[0].startswith("metric") and "report.html" in text and "rendered 11" in text
    with pytest.raises(Exception, match="no scores.json"):
        compare_runs(tmp_path / "out", tmp_path / "missing")


def test_cases_reach_the_engine_as_requests_and_images_carry_its_record(tmp_path):
    from core.conditioning.character import Character
    from core.io.metadata import read_record

    seen = []

    class RecordingPipe(FakePipe):
        def __call__(self, prompt, characters, **kwargs):
            seen.extend(characters)
            return super().__call__(prompt, characters, **kwargs)

    bench = tmp_path / "bench"
    shutil.copytree(EXAMPLE, bench)
    lines = (bench / "cases.jsonl").read_text().splitlines()
    (bench / "cases.jsonl").write_text("\n".join(lines[1:2] + lines[-1:]) + "\n")  # ruby-1 and duo-2
    engine = fake_engine(RecordingPipe())
    first = run_benchmark(bench, engine, None, tmp_path / "run", settings=SETTINGS, text_adapter="adapter.pt")
    assert all(isinstance(character, Character) for character in seen) and len(seen) == 3
    assert seen[1].name == "Leaf" and seen[1].mask is not None and seen[1].mask.box == (0.0, 0.0, 0.5, 1.0)
    assert seen[0].name == "Ruby" and seen[0].description == "a round red creature with big eyes"
    assert engine.loads[0] == "adapter.pt" and engine.fake.text_adapter == "adapter.pt"  # before the first case
    record = read_record(tmp_path / "run" / first.rows[1]["image"])  # Recall makes the same image again
    assert (record.prompt, record.seed, record.width, record.num_inference_steps, record.guidance_scale) == (
        "[Leaf] waving at [Ruby] on a city street", 12, SETTINGS.width, SETTINGS.steps, SETTINGS.guidance)
    assert [(c.name, c.mask, c.scale) for c in record.characters] == [("Leaf", "left", 0.9), ("Ruby", "right", 0.9)]
    assert (record.models, record.dtype, record.preset) == (
        {"spec": "tiny", "text_adapter": "adapter.pt"}, "float32", "full")
    resumed = fake_engine(RecordingPipe())
    assert run_benchmark(bench, resumed, None, tmp_path / "run", settings=SETTINGS,
                         text_adapter="adapter.pt").reused == 2
    assert resumed.loads == []  # nothing to render: no models loaded


def test_a_failed_load_stops_the_run(tmp_path):
    from core.engine import Engine

    class NoModels(Engine):
        def load(self, report=None, text_adapter=None):
            raise OSError("no models here")

    with pytest.raises(OSError, match="no models here"):
        run_benchmark(EXAMPLE, NoModels("tiny"), None, tmp_path / "run", settings=SETTINGS)
    assert not list((tmp_path / "run" / "images").iterdir())  # no case marked failed for it, nothing written


def test_student_t_against_known_values():
    assert student_t_ppf(0.975, 9) == pytest.approx(2.262157, abs=1e-6)
    assert student_t_ppf(0.975, 1) == pytest.approx(12.706205, abs=1e-5)
    assert student_t_ppf(0.025, 30) == pytest.approx(-2.042272, abs=1e-6)
    assert 2 * (1 - student_t_cdf(2.0, 10)) == pytest.approx(0.0733880, abs=1e-6)
    # closed form for 3 degrees of freedom
    t = -1.5
    exact = 0.5 + (t / math.sqrt(3) / (1 + t * t / 3) + math.atan(t / math.sqrt(3))) / math.pi
    assert student_t_cdf(t, 3) == pytest.approx(exact, abs=1e-10)


def test_interval_and_paired_test():
    interval = mean_interval([1, 2, 3, 4, 5])
    assert interval.mean == 3 and interval.low == pytest.approx(3 - 2.776445 * math.sqrt(2.5 / 5), abs=1e-5)
    assert mean_interval([0.5]).low is None and mean_interval([]).mean is None
    test = paired_t_test([1, 2, 3, 4], [1.5, 2.1, 3.9, 4.2])
    assert test.delta == pytest.approx(0.425) and test.t == pytest.approx(2.36507, abs=1e-4)
    assert test.p == pytest.approx(0.09894, abs=1e-4)
    shifted = paired_t_test([1, 2, 3], [2, 3, 4])
    assert shifted.p == 0.0 and shifted.delta == 1.0
    assert paired_t_test([1, None, 3], [1, 5, 3]).n == 2



@pytest.mark.slow
def test_runner_with_the_tiny_engine(tmp_path, tiny_scorer):
    """The real pipeline on the tiny random bundle: two cases (one with two characters and layout masks)."""
    from core.engine import Engine

    bench = tmp_path / "bench"
    shutil.copytree(EXAMPLE, bench)
    lines = (bench / "cases.jsonl").read_text().splitlines()
    (bench / "cases.jsonl").write_text("\n".join(lines[1:2] + lines[-1:]) + "\n")
    engine = Engine("tiny", dtype="float32")
    settings = RenderSettings(steps=2, width=32, height=32)
    first = run_benchmark(bench, engine, tiny_scorer, tmp_path / "run", settings=settings)
    assert first.rendered == 2 and first.failed == 0 and first.summary["clip_i"]["n"] == 2
    again = run_benchmark(bench, engine, tiny_scorer, tmp_path / "run", settings=settings)
    assert again.rendered == 0 and again.reused == 2
