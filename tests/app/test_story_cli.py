"""The ``story`` commands on the tiny models: render to pages, PDF and ZIP; resume; kill -9; two processes.

Renders use the example comic (8 panels, 2 characters) at 48x32 pixels, 2 steps and 72 dpi pages. Every render
runs on one torch thread (subprocesses through OMP_NUM_THREADS): the tiny encoders are fastest that way on a busy
machine, and the 1-process and 2-process renders then do the same arithmetic.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.story_commands import add_story_arguments, main, story_main
from core.io.metadata import read_record
from core.story import load_story
from core.story.geometry import plan_pages
from core.story.manifest import load_manifest, panel_filename

REPO = Path(__file__).resolve().parents[2]
COMIC = REPO / "assets" / "stories" / "fishing-trip.story"
PANELS = 8
PAGES = 1  # "a one-page comic": the comic layout puts all 8 panels on one A4 page
DRAFT = ["--size", "48x32", "--steps", "2", "--dpi", "72"]


@contextlib.contextmanager
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def render_args(out: Path, *extra: str) -> list[str]:
    return ["render", str(COMIC), "--out", str(out), "--models", "tiny", *DRAFT, *extra]


def panel_bytes(out: Path) -> list[bytes]:
    return [(out / panel_filename(i)).read_bytes() for i in range(PANELS)]


def subprocess_env(user_home: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", INSTANTCHARACTER_HOME=str(user_home), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_cli(args: list[str], user_home: Path, launcher: list[str] | None = None, timeout: int = 600):
    command = (launcher or [sys.executable]) + ["-m", "app.story_commands", *args]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(user_home), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def reference_render(tiny_models, user_home, tmp_path_factory) -> Path:
    """One uninterrupted single-process render of the comic, through the command line."""
    out = tmp_path_factory.mktemp("reference") / "out"
    done = run_cli(render_args(out), user_home)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


# ------------------------------------------------------------------------------------------------ no models
def test_check_lists_panels(capsys):
    assert main(["check", str(COMIC)]) == 0
    out = capsys.readouterr().out
    assert '"Red and Blue Go Fishing": 8 panels, 2 characters' in out and f"{PAGES} page" in out
    assert "panel 7 (line 39; [Red@left], [Blue@right]; seed 77 (pinned); 2 bubbles)" in out


def test_check_warns_of_characters_no_font_has_and_knows_the_new_keys(tmp_path, capsys):
    manga = COMIC.parent / "manga-page.story"
    assert main(["check", str(manga)]) == 0
    out = capsys.readouterr().out
    assert "  read right-to-left, vertical bubbles" in out and "warning" not in out
    assert main(["check", str(COMIC.parent / "webtoon-strip.story")]) == 0
    out = capsys.readouterr().out
    assert "layout webtoon, 800 px wide in slices of at most 1280 px" in out and "(line 14; [NC]; seed" in out and "1100 px tall" in out
    odd = tmp_path / "odd.story"
    odd.write_text(COMIC.read_text().replace("Today is the day.", "Today is the day \U000F0001."),
                   encoding="utf-8")
    (tmp_path / "characters").symlink_to(COMIC.parent / "characters")
    assert main(["check", str(odd)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^warning: line \d+ \(Red's speech\): no font has '.' \(U\+F0001", out, re.M), out
    assert out.rstrip().endswith("ok")


def test_problems_print_one_line_each_with_file_and_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "red.png").write_bytes((REPO / "assets/stories/characters/red.png").read_bytes())
    story = tmp_path / "bad.story"
    story.write_text("size: 1000x768\ncharacter Bob: red.png\ncharacter Al: nope.png\n---\n"
                     "[Bobb] walks\n[Bob@middle] runs\n")
    for command in (["check", str(story)], ["to-json", str(story), str(tmp_path / "x.json")],
                    ["render", str(story), "--out", str(tmp_path / "out"), "--models", "tiny"]):
        assert main(command) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert [line.split(": ", 1)[0] for line in lines] == [f"{story}:{n}" for n in (1, 3, 5, 6)], lines
        assert "unknown character [Bobb] (did you mean [Bob]?)" in lines[2]
    assert not (tmp_path / "out").exists()  # nothing loaded, nothing written
    empty = tmp_path / "empty.story"
    empty.write_text("title: nothing yet\n---\n")
    assert main(["check", str(empty)]) == 2
    assert capsys.readouterr().err.startswith(f"{empty}: empty story")


def test_panel_list_numbers_checked_before_any_range_is_expanded():
    from app.story_commands import parse_panel_list

    assert parse_panel_list("2,5-7") == [1, 4, 5, 6] and parse_panel_list("200") == [199]
    for text, message in [
        ("1-99999999999", "'1-99999999999': panel numbers go up to 200 (a story has at most 200 panels), "
                          "got 99999999999"),
        ("201", "'201': panel numbers go up to 200 (a story has at most 200 panels), got 201"),
        ("9" * 5000, "expected panel numbers such as 2,5-7"),
        ("0-3", "'0-3': panel numbers start at 1 and ranges go upwards"),
        (",", "no panel numbers given"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError) as info:
            parse_panel_list(text)
        assert message in str(info.value)


def test_render_arguments_over_the_limits_exit_2_before_loading(tmp_path, capsys, monkeypatch):
    import app.story_commands as commands

    monkeypatch.setattr(commands, "load_engine", lambda *a, **k: pytest.fail("loaded the models"))
    out = tmp_path / "out"
    for extra, message in [
        (["--panels", "1-99999999999"], "argument --panels: '1-99999999999': panel numbers go up to 200"),
        (["--dpi", "1200"], "argument --dpi: '1200': dpi must be from 72 to 600, got 1200"),
        (["--dpi", "36"], "argument --dpi: '36': dpi must be from 72 to 600, got 36"),
        (["--steps", "1000000000"], "argument --steps: '1000000000': steps must be from 1 to 100, got 1000000000"),
        (["--size", "4112x16"], "argument --size: '4112x16': width must be from 16 to 4096, got 4112"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["render", str(COMIC), "--out", str(out), "--models", "tiny", *extra])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    assert main(["render", str(COMIC), "--out", str(out), "--models", "tiny", "--panels", "9"]) == 2
    assert capsys.readouterr().err.strip() == f"{COMIC}: --panels: the story has 8 panels, got panel 9"
    big = tmp_path / "big.story"
    big.write_text(COMIC.read_text().replace("page: A4 portrait", "page: A3 portrait"))
    for name in ("red", "blue"):
        (tmp_path / "characters").mkdir(exist_ok=True)
        (tmp_path / "characters" / f"{name}.png").write_bytes((COMIC.parent / "characters" / f"{name}.png")
                                                              .read_bytes())
    assert main(["render", str(big), "--out", str(out), "--models", "tiny", "--dpi", "600"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"{big}: --dpi 600: one page (A3 portrait) at 600 dpi is 7016x9921 pixels (69.6 million): the limit is "
        "40 million; lower the dpi or use a smaller page")
    assert not out.exists()


def test_check_refuses_a_billion_steps(tmp_path, capsys):
    story = tmp_path / "slow.story"
    story.write_text("title: slow\nsteps: 1000000000\n---\na road [NC]\n")
    assert main(["check", str(story)]) == 2
    assert capsys.readouterr().err.strip() == f"{story}:2: steps must be from 1 to 100, got 1000000000"
    done = run_cli(["check", str(story)], tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"{story}:2: steps must be from 1 to 100, got 1000000000"


def test_python_m_entry_point_and_bad_arguments(tmp_path, user_home):
    done = run_cli(["check", str(COMIC)], user_home)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok")
    bad = run_cli(["render", str(COMIC), "--out", str(tmp_path), "--size", "50x32"], user_home)
    assert bad.returncode == 2 and "width 50 is not a multiple of 16: use 48 or 64" in bad.stderr


def test_to_json_renders_like_the_text(tmp_path, capsys):
    assert main(["to-json", str(COMIC), str(tmp_path / "comic.json")]) == 0
    assert "8 panels" in capsys.readouterr().out
    assert load_story(tmp_path / "comic.json").to_dict() == load_story(COMIC).to_dict()


def test_wires_under_a_story_command(capsys):
    """How app.cli mounts it: ``story`` with add_story_arguments, handler story_main."""
    parser = argparse.ArgumentParser(prog="instantcharacter-studio")
    story = parser.add_subparsers(dest="command").add_parser("story")
    add_story_arguments(story)
    story.set_defaults(handler=story_main)
    args = parser.parse_args(["story", "check", str(COMIC)])
    assert args.handler(args) == 0 and "ok" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["story", "render", str(COMIC)])  # --out is required


# ------------------------------------------------------------------------------------------------ rendering
def test_render_to_pages_pdf_zip_then_resume_renders_nothing(tiny_models, tmp_path, capsys, monkeypatch):
    from pypdf import PdfReader

    import app.story_commands as commands

    out = tmp_path / "out"
    with one_thread():
        assert main(render_args(out)) == 0
    printed = capsys.readouterr().out
    progress = [line for line in printed.splitlines() if line.startswith("[") and " done in " in line]
    assert [line.split("] ")[0] for line in progress] == [f"[{k}/{PANELS}" for k in range(1, PANELS + 1)]
    assert f"rendered {PANELS} panels, kept 0 already done" in printed

    story = commands.with_overrides(load_story(COMIC), (48, 32), 2, 72)
    assert len(plan_pages(story)) == PAGES
    pages = sorted((out / "pages").glob("page-*.png"))
    assert [p.name for p in pages] == ["page-01.png"]
    assert Image.open(pages[0]).size == (595, 842)  # A4 at 72 dpi
    assert len(PdfReader(out / "story.pdf").pages) == PAGES
    with zipfile.ZipFile(out / "story.zip") as archive:
        names = set(archive.namelist())
    assert {"manifest.json", "story.json", "story.pdf", "fishing-trip.story", "characters/red.png",
            "characters/blue.png", "pages/page-01.png"} <= names
    assert {panel_filename(i) for i in range(PANELS)} <= names
    manifest = load_manifest(out)
    assert sorted(manifest.done()) == list(range(PANELS)) and not manifest.failed()

    record = read_record(out / panel_filename(0))  # the studio's Recall reads a panel like any generation
    # the panel's own size (its cell's shape at the story's 48x32 budget), what Recall brings back
    assert (record.width, record.height) == story.panel_size(story.panels[0]) == (32, 48)
    assert (record.num_inference_steps, record.seed) == (2, story.panels[0].seed)
    assert [(c.name, c.mask) for c in record.characters] == [("Red", "left"), ("Blue", "right")]
    assert (record.models["spec"], record.dtype, record.preset) == ("tiny", "float32", "full")

    before = panel_bytes(out)
    monkeypatch.setattr(commands, "load_engine", lambda *a, **k: pytest.fail("resume loaded the models"))
    assert main(render_args(out, "--resume")) == 0
    assert f"rendered 0 panels, kept {PANELS} already done" in capsys.readouterr().out
    assert panel_bytes(out) == before


def test_features_computed_once_per_story(tiny_models, tmp_path):
    """With the real tiny engine: SigLIP and DINOv2 run for each character image once per story, not per panel,
    and T5 encodes each distinct prompt once."""
    from core.conditioning.character import Character
    from core.engine import Engine
    from core.story import parse_story
    from core.story.render import render_story

    for name, colour in (("ann", (210, 60, 40)), ("bob", (40, 70, 210)), ("probe", (90, 200, 90))):
        Image.new("RGB", (40, 56), colour).save(tmp_path / f"{name}.png")
    panels = ["[Ann@left] meets [Bob@right]", "[Ann] waves", "[Bob] waves", "a road [NC]",
              "[Ann@left] meets [Bob@right]", "[Bob@left] and [Ann@right] walk away"]
    text = ("size: 32x32\nsteps: 2\nseed: 3\ncharacter Ann: ann.png\ncharacter Bob: bob.png\n---\n"
            + "\n".join(panels) + "\n")
    story = parse_story(text, base_dir=tmp_path)
    engine = Engine(str(tiny_models), dtype="float32")
    tiny_pipe = engine.pipe
    calls = {"siglip": 0, "dinov2": 0, "text_encoder_2": 0}

    def count(name):
        def hook(module, args, output):
            calls[name] += 1
        return getattr(tiny_pipe, name).register_forward_hook(hook)

    handles = [count(name) for name in calls]
    try:
        with one_thread():
            tiny_pipe.clear_caches()
            tiny_pipe.encode_character(Character(tmp_path / "probe.png"))  # one image's forward calls
            one_image = dict(calls)
            result = render_story(story, engine, tmp_path / "out")
    finally:
        for handle in handles:
            handle.remove()
    assert result.rendered == list(range(6)) and not result.failed
    assert one_image["siglip"] >= 1 and one_image["dinov2"] >= 1
    for encoder in ("siglip", "dinov2"):  # two characters in six panels: two images' worth of encoder calls
        assert calls[encoder] - one_image[encoder] == 2 * one_image[encoder], calls
    assert calls["text_encoder_2"] == len(set(panels)) == 5  # the repeated prompt is encoded once


@pytest.mark.slow
def test_kill_9_mid_render_then_resume_equals_uninterrupted(reference_render, user_home, tmp_path):
    out = tmp_path / "out"
    log = tmp_path / "render.log"
    command = [sys.executable, "-m", "app.story_commands", *render_args(out)]
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, cwd=REPO, env=subprocess_env(user_home), stdout=sink, stderr=sink)
        deadline = time.monotonic() + 600
        # the manifest records a panel just after its file lands: wait for the record, then kill
        while not load_manifest(out).done():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(load_manifest(out).done())
    assert 1 <= len(finished) < PANELS, finished
    assert not (out / "story.pdf").exists()

    resumed = run_cli(render_args(out, "--resume"), user_home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (f"rendered {PANELS - len(finished)} panels, kept {len(finished)} already done"
            in resumed.stdout), resumed.stdout
    assert panel_bytes(out) == panel_bytes(reference_render)
    assert not list(out.rglob("*.tmp"))
    assert (json.loads((out / "manifest.json").read_text())["panels"]
            == json.loads((reference_render / "manifest.json").read_text())["panels"])


@pytest.mark.slow
def test_two_processes_equal_one(reference_render, user_home, tmp_path):
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = run_cli(render_args(out), user_home, launcher=launcher)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[rank 0]" in done.stdout and "[rank 1]" in done.stdout
    assert done.stdout.count("pdf: ") == 1  # rank 0 exports
    assert panel_bytes(out) == panel_bytes(reference_render)
    assert (json.loads((out / "manifest.json").read_text())["panels"]
            == json.loads((reference_render / "manifest.json").read_text())["panels"])
    assert not list(out.glob("manifest.part-*.json"))
    assert [p.read_bytes() for p in sorted((out / "pages").glob("*.png"))] == [
        p.read_bytes() for p in sorted((reference_render / "pages").glob("*.png"))]


def test_render_and_edit_take_the_model_flags_generate_takes(tmp_path, monkeypatch):
    """``story render`` and ``story edit`` take ``generate``'s model flags (``--base``, ``--vae``/``--clip``/``--t5``,
    ``--adapter``, ``--models``, ``--preset``, ``--dtype``) and turn them into the engine's sources by the same
    function (``app.arguments.file_sources``)."""
    import core.engine
    import core.story.edit
    from app.arguments import file_sources
    from app.cli import build_parser

    flags = ["--base", "some/flux", "--models", "tiny", "--preset", "low", "--dtype", "float32", "--vae", "ae.sft",
             "--clip", "clip_l.sft", "--t5", "t5xxl.gguf", "--adapter", "runs/a/adapter.safetensors"]
    story = ["story", "render", str(COMIC), "--out", "x"], ["story", "edit", str(COMIC), "--out", "x", "--panel", "1"]
    for argv in (["generate", "--out", "x.png"], *story):
        args = build_parser().parse_args([*argv, *flags])
        assert (args.base, args.models, args.preset, args.dtype, args.vae, args.clip, args.t5, args.adapter) == (
            "some/flux", "tiny", "low", "float32", "ae.sft", "clip_l.sft", "t5xxl.gguf", "runs/a/adapter.safetensors")

    class Loaded(Exception):
        pass

    def engine(models, **kwargs):
        raise Loaded(models, kwargs)

    monkeypatch.setattr(core.engine, "Engine", engine)
    monkeypatch.setattr(core.story.edit, "prepare_panel_edit", lambda *a, **k: [])  # as if the panel were rendered
    out = ["--out", str(tmp_path / "out"), "--models", "tiny", "--base", "some/flux", "--preset", "full"]
    for argv in (["story", "render", str(COMIC), *out], ["story", "edit", str(COMIC), *out, "--panel", "2"]):
        args = build_parser().parse_args(argv)
        with pytest.raises(Loaded) as info:
            story_main(args)
        models, kwargs = info.value.args
        assert (models, kwargs["preset"], kwargs["dtype"]) == ("tiny", "full", None)
        assert kwargs["sources"] == file_sources(args) and kwargs["sources"].base == "some/flux"
