"""render_story with the engine on a fake pipeline: seeds, resume, failures, character reuse, records,
multi-process splitting."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from PIL import Image

from core.story.manifest import DONE, FAILED, load_manifest, panel_filename, sha256_file
from core.story.parse_text import parse_story
from core.story.render import PNG_METADATA_KEY, render_story
from tests.core.story.conftest import REPO, FakePipe, fake_pipe_engine, small_story_text


def render(story, pipe, out, **kwargs):
    """Renders with the engine on ``pipe`` (a FakePipe)."""
    return render_story(story, fake_pipe_engine(pipe), out, **kwargs)


def panel_bytes(out, n):
    return [(out / panel_filename(i)).read_bytes() for i in range(n)]


def test_render_calls_engine_with_panel_settings(story_dir, tmp_path, fake_pipe):
    story = parse_story(small_story_text(3), base_dir=story_dir)
    events = []
    result = render(story, fake_pipe, tmp_path / "out", progress=events.append)
    assert result.rendered == [0, 1, 2] and not result.failed
    first = fake_pipe.calls[0]
    assert first["prompt"] == "[Ann] greets [Bob] in scene 0, ink drawing"
    assert first["seed"] == story.panels[0].seed and (first["width"], first["height"]) == (32, 32)
    ann, bob = first["characters"]
    assert (ann.name, ann.scale, ann.mask.label) == ("Ann", 0.8, "left") and bob.mask.label == "right"
    assert fake_pipe.calls[2]["characters"] == []
    assert [(e.index, e.status) for e in events] == [(0, "rendering"), (0, DONE), (1, "rendering"), (1, DONE),
                                                     (2, "rendering"), (2, DONE)]
    image = Image.open(tmp_path / "out" / panel_filename(0))
    meta = json.loads(image.text[PNG_METADATA_KEY])
    assert meta["seed"] == story.panels[0].seed and meta["panel"] == 1


def test_panel_png_carries_the_studio_metadata_for_recall(story_dir, tmp_path, fake_pipe):
    from core.conditioning.character import Character
    from core.io.metadata import image_from_b64, read_record

    story = parse_story(small_story_text(3).replace("[Ann@left]", "[Ann@box:0.1,0.2,0.5,1]"), base_dir=story_dir)
    render(story, fake_pipe, tmp_path / "out")  # the engine's record: its provenance is the fake_pipe_engine's
    record = read_record(tmp_path / "out" / panel_filename(0))
    panel = story.panels[0]
    assert (record.prompt, record.seed, record.width, record.height, record.num_inference_steps) == (
        "[Ann] greets [Bob] in scene 0, ink drawing", panel.seed, 32, 32, story.steps)
    assert (record.guidance_scale, record.true_cfg_scale, record.negative_prompt) == (3.5, 1.0, None)
    assert (record.models, record.dtype, record.preset) == ({"spec": "tiny"}, "float32", "full")
    ann, bob = record.characters
    assert (ann.name, ann.scale, ann.mask, bob.name, bob.scale, bob.mask) == (
        "Ann", 0.8, "box:0.1,0.2,0.5,1", "Bob", 0.9, "right")
    assert image_from_b64(ann.image).getpixel((0, 0)) == (200, 30, 30)
    rebuilt = [Character.from_record(c) for c in record.characters]  # what Recall hands to the engine
    assert [c.name for c in rebuilt] == ["Ann", "Bob"] and rebuilt[0].mask.box == (0.1, 0.2, 0.5, 1.0)
    assert "Seed: %d" % panel.seed in Image.open(tmp_path / "out" / panel_filename(0)).text["parameters"]
    assert read_record(tmp_path / "out" / panel_filename(2)).characters == []  # the [NC] panel


def test_options_reach_the_request_or_the_pipeline_and_the_settings_hash(story_dir, tmp_path, fake_pipe):
    from core.io.metadata import read_record

    story = parse_story(small_story_text(1), base_dir=story_dir)
    out = tmp_path / "out"
    render(story, fake_pipe, out, options={"max_sequence_length": 77, "num_inference_steps": 3, "extra": 1})
    call = fake_pipe.calls[0]
    assert (call["max_sequence_length"], call["extra"]) == (77, 1)  # a request field, a pipeline option
    record = read_record(out / panel_filename(0))
    assert (record.max_sequence_length, record.num_inference_steps) == (77, 3)
    again = FakePipe()
    assert render(story, again, out, resume=True, options={"max_sequence_length": 77, "num_inference_steps": 3,
                                                           "extra": 1}).rendered == []
    assert render(story, again, out, resume=True).rendered == [0]  # other options: other settings


def test_character_images_loaded_once_and_objects_reused(story_dir, tmp_path, fake_pipe, monkeypatch):
    from core.story import render as render_module

    story = parse_story(small_story_text(6), base_dir=story_dir)  # reads only the headers of the images
    opened = []
    real_open = render_module.Image.open
    monkeypatch.setattr(render_module.Image, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    render(story, fake_pipe, tmp_path / "out")
    assert len(opened) == 2  # one read per character per story
    with_chars = [c["characters"] for c in fake_pipe.calls if c["characters"]]
    assert len(with_chars) == 4
    assert all(chars[0] is with_chars[0][0] and chars[1] is with_chars[0][1] for chars in with_chars)
    assert len(fake_pipe.encoded) == 2  # content-keyed cache: features computed once per character


def test_resume_renders_nothing_then_only_the_changed_panel(story_dir, tmp_path):
    out = tmp_path / "out"
    story = parse_story(small_story_text(5), base_dir=story_dir)
    render(story, FakePipe(), out)
    before = panel_bytes(out, 5)
    again = FakePipe()
    result = render(story, again, out, resume=True)
    assert again.calls == [] and result.rendered == [] and result.skipped == [0, 1, 2, 3, 4]
    changed = parse_story(small_story_text(5).replace("scene 1", "scene one"), base_dir=story_dir)
    third = FakePipe()
    result = render(changed, third, out, resume=True)
    assert result.rendered == [1] and len(third.calls) == 1
    after = panel_bytes(out, 5)
    assert after[1] != before[1] and after[:1] + after[2:] == before[:1] + before[2:]
    # captions and dialogue do not change pixels: nothing to re-render
    recaptioned = parse_story(small_story_text(5).replace("scene 1", "scene one").replace("caption 1", "new"),
                              base_dir=story_dir)
    assert render(recaptioned, FakePipe(), out, resume=True).rendered == []


def test_interrupted_render_resumes_to_identical_result(story_dir, tmp_path):
    story = parse_story(small_story_text(5), base_dir=story_dir)
    reference = tmp_path / "ref"
    render(story, FakePipe(), reference)

    class Killed(BaseException):
        pass

    class DiesOnThirdPanel(FakePipe):
        def __call__(self, *args, **kwargs):
            if len(self.calls) == 2:
                raise Killed  # like kill -9: nothing after this point runs
            return super().__call__(*args, **kwargs)

    out = tmp_path / "out"
    with pytest.raises(Killed):
        render(story, DiesOnThirdPanel(), out)
    # a half-written temp file and even a stray final-named file without a manifest record are not "done"
    (out / "panels" / ".panel-003.png.x.tmp").write_bytes(b"\x89PNG half")
    (out / panel_filename(3)).write_bytes(b"\x89PNG half")
    assert sorted(load_manifest(out).done()) == [0, 1]
    result = render(story, FakePipe(), out, resume=True)
    assert result.rendered == [2, 3, 4]
    assert not list(out.rglob("*.tmp"))  # the killed render's leftovers are cleaned up
    assert panel_bytes(out, 5) == panel_bytes(reference, 5)
    assert load_manifest(out).to_dict()["panels"] == load_manifest(reference).to_dict()["panels"]


def test_failed_panel_is_marked_and_others_continue(story_dir, tmp_path):
    story = parse_story(small_story_text(5), base_dir=story_dir)
    out = tmp_path / "out"
    result = render(story, FakePipe(fail_on="scene 1"), out)
    assert result.rendered == [0, 2, 3, 4] and list(result.failed) == [1]
    record = load_manifest(out).panels[1]
    assert record.status == FAILED and record.error == "RuntimeError: CUDA out of memory (fake)"
    assert record.file is None
    retry = FakePipe()
    assert render(story, retry, out, resume=True).rendered == [1] and len(retry.calls) == 1


def test_only_rerenders_a_reseeded_panel(story_dir, tmp_path):
    story = parse_story(small_story_text(4), base_dir=story_dir)
    out = tmp_path / "out"
    render(story, FakePipe(), out)
    reseeded = story.with_panel_seed(2, 4242)
    pipe = FakePipe()
    assert render(reseeded, pipe, out, resume=True).rendered == [2]
    assert pipe.calls[0]["seed"] == 4242
    assert render(reseeded, FakePipe(), out, only=[0]).rendered == [0]
    assert sorted(load_manifest(out).done()) == [0, 1, 2, 3]


class ThreadState:
    """One rank of a simulated multi-process run: ranks are threads sharing a barrier, like PartialState's."""

    def __init__(self, rank, world, barrier):
        self.process_index, self.num_processes, self.barrier = rank, world, barrier

    def wait_for_everyone(self):
        self.barrier.wait(timeout=300)  # generous: the other rank may be slow on a busy machine

    def split_between_processes(self, items):
        per, extra = divmod(len(items), self.num_processes)
        start = self.process_index * per + min(self.process_index, extra)
        return contextlib.nullcontext(items[start:start + per + (self.process_index < extra)])


def render_on_ranks(story, out, world, **kwargs):
    barrier = threading.Barrier(world)
    results = [None] * world

    def run(rank):
        results[rank] = render(story, FakePipe(), out, state=ThreadState(rank, world, barrier), **kwargs)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive(), "a rank did not finish its render in 300 s"
    assert all(r is not None for r in results), "a rank's render failed (its traceback is printed above)"
    return results


def test_split_ranks_write_parts_and_rank0_merges(story_dir, tmp_path):
    story = parse_story(small_story_text(5), base_dir=story_dir)
    single = tmp_path / "single"
    render(story, FakePipe(), single)
    multi = tmp_path / "multi"
    r0, r1 = render_on_ranks(story, multi, 2)
    assert r0.rendered == [0, 1, 2] and r1.rendered == [3, 4]
    assert not list(multi.glob("manifest.part-*"))
    assert panel_bytes(multi, 5) == panel_bytes(single, 5)
    assert load_manifest(multi).to_dict() == load_manifest(single).to_dict()
    assert r0.manifest.to_dict() == r1.manifest.to_dict() == load_manifest(single).to_dict()
    changed = parse_story(small_story_text(5).replace("scene 4", "scene four"), base_dir=story_dir)
    r0, r1 = render_on_ranks(changed, multi, 2, resume=True)
    assert r0.rendered + r1.rendered == [4]


def test_leftover_parts_of_a_killed_multi_process_render_count_on_resume(story_dir, tmp_path):
    story = parse_story(small_story_text(4), base_dir=story_dir)
    out = tmp_path / "out"
    render(story, FakePipe(), out)
    manifest = json.loads((out / "manifest.json").read_text())
    part = {**manifest, "panels": [p for p in manifest["panels"] if p["index"] >= 2]}
    manifest["panels"] = [p for p in manifest["panels"] if p["index"] < 2]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "manifest.part-1.json").write_text(json.dumps(part))
    pipe = FakePipe()
    result = render(story, pipe, out, resume=True)
    assert result.rendered == [] and pipe.calls == [] and not list(out.glob("manifest.part-*"))
    assert sorted(load_manifest(out).done()) == [0, 1, 2, 3]


TORCHRUN_SCRIPT = textwrap.dedent("""
    import sys
    from accelerate import PartialState
    from core.story.load import load_story
    from core.story.render import render_story
    from tests.core.story.conftest import fake_pipe_engine
    state = PartialState(cpu=True)
    result = render_story(load_story(sys.argv[1]), fake_pipe_engine(), sys.argv[2], state=state)
    # one file per rank: two processes printing to one pipe may interleave their words
    with open(sys.argv[3] + f"/rank{state.process_index}.txt", "w") as f:
        f.write(repr(result.rendered))
""")


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(story_dir, tmp_path):
    story_path = story_dir / "s.story"
    story_path.write_text(small_story_text(5))
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    single = tmp_path / "single"
    render(parse_story(small_story_text(5), base_dir=story_dir), FakePipe(), single)
    multi = tmp_path / "multi"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(story_path), str(multi), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == "[0, 1, 2]"
    assert (tmp_path / "rank1.txt").read_text() == "[3, 4]"
    assert panel_bytes(multi, 5) == panel_bytes(single, 5)
    assert load_manifest(multi).to_dict() == load_manifest(single).to_dict()
    assert all(sha256_file(multi / r.file) == r.file_sha256 for r in load_manifest(multi).panels.values())
    assert not list(multi.glob("manifest.part-*"))
