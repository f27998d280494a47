"""The Space as Hugging Face builds and starts it: requirements.txt installable on its own with the tested versions,
and on ZeroGPU the real ``spaces`` package imported before torch (else it stops with "CUDA has been initialized
before importing the spaces package")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from app.context import Access

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>[^\s;]+)\s*(;.*)?$")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def _requirements() -> dict[str, str]:
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    pins = {}
    for line in lines:
        match = PIN.match(line)
        assert match, f"requirements.txt: {line!r} is not NAME==VERSION (a Space installs it before the code exists)"
        pins[_name(match.group("name"))] = match.group("version")
    return pins


def _tested_versions() -> dict[str, str]:
    """constraints.txt's exact versions where the repository has one, else the versions installed here (the test
    environment), without a local build label (torch 2.13.0+cpu is 2.13.0 on PyPI)."""
    constraints = REPO / "constraints.txt"
    if constraints.is_file():
        out = {}
        for line in constraints.read_text().splitlines():
            match = PIN.match(line.strip())
            if match:
                out[_name(match.group("name"))] = match.group("version").split("+")[0]
        return out
    return {_name(d.metadata["Name"]): d.version.split("+")[0] for d in metadata.distributions()}


def test_requirements_pin_every_runtime_dependency_at_the_tested_version():
    pins = _requirements()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {_name(re.split(r"[<>=!;\[ ]", d, maxsplit=1)[0]) for d in project["dependencies"]} | {"spaces"}
    assert needed == set(pins), f"missing {needed - set(pins)}, extra {set(pins) - needed}"
    tested = _tested_versions()
    differ = {n: (v, tested.get(n)) for n, v in pins.items() if tested.get(n) != v}
    assert not differ, f"requirements.txt differs from the tested versions (pinned, tested): {differ}"


def test_space_app_imports_the_real_spaces_before_torch_on_zero_gpu(tmp_path):
    pytest.importorskip("spaces")  # the test extra installs it
    # Start the Space's app file as Spaces does, and note whether `spaces` is imported (or being imported) when
    # torch's import begins. gradio's own attempt to import `spaces` fails on purpose and leaves it out of
    # sys.modules, so only an import by the app counts.
    probe = (
        "import sys, runpy\n"
        "seen = {}\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and 'torch' not in seen:\n"
        "            seen['torch'] = 'spaces' in sys.modules\n"
        "        return None\n"
        "sys.meta_path.insert(0, Watch())\n"
        "try:\n"
        "    runpy.run_path('space_app.py', run_name='space_app')\n"
        "    outcome = 'started'\n"
        "except BaseException as exc:\n"
        "    outcome = f'{type(exc).__name__}: {exc}'\n"
        "print('SPACES_BEFORE_TORCH', seen.get('torch'))\n"
        "print('OUTCOME', outcome.splitlines()[0] if outcome else '')\n"
    )
    env = dict(os.environ, SPACES_ZERO_GPU="true", SPACE_ID="someone/instantcharacter-studio",
               SPACES_ZERO_DEVICE_API_URL="http://127.0.0.1:9/", INSTANTCHARACTER_MODELS="tiny",
               INSTANTCHARACTER_PRELOAD="0", PYTHONPATH=str(REPO), HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()
                 if line.startswith(("SPACES_BEFORE_TORCH", "OUTCOME")))
    assert lines.get("SPACES_BEFORE_TORCH") == "True", (lines, done.stderr[-2000:])
    # on a CPU build of torch the real package then stops at torch.version.cuda (None): as far as this machine goes
    assert "CUDA has been initialized before importing" not in done.stdout + done.stderr


def test_owner_only_advice_on_a_space_names_no_command_line_option():
    access = Access(exposed=True, why="a Hugging Face Space", space=True)
    assert "--auth" not in access.notice()
    assert "INSTANTCHARACTER_MODELS" in access.notice()
    with pytest.raises(Exception) as info:
        access.check_owner(None, "Training")
    assert str(info.value).startswith("Training is turned off on a Hugging Face Space")
    assert "--auth" not in str(info.value)
    assert "--auth USER:PASS" in Access(exposed=True, why="shared with a public link").notice()


def test_visitors_notes_name_no_server_folder(tiny_models, character_files, tmp_path):
    from app.context import StudioContext, StudioSettings
    from app.tabs import generate_events as ev

    for access, shown in ((Access(), True), (Access(exposed=True, why="a Hugging Face Space", space=True), False)):
        ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"), access=access)
        _, _, notes, _ = ev.GenerateEvents(ctx).generate(None, lambda *a, **k: None, *ev.form_values(
            image1=str(character_files[0]), prompt="a portrait", width=32, height=32, steps=1), [])
        first = notes.splitlines()[0]
        assert first.startswith("- Saved 1 image(s)") and (str(tmp_path / "out") in first) == shown, first


@pytest.mark.slow  # builds the whole studio in a subprocess (about 20 s)
def test_space_app_starts_without_the_spaces_package(tmp_path):
    probe = ("import sys, runpy\n"
             "sys.modules['spaces'] = None  # as if not installed: importing it fails, find_spec gives None\n"
             "scope = runpy.run_path('space_app.py', run_name='space_app')\n"
             "print('BUILT', type(scope['demo']).__name__)\n")
    env = dict(os.environ, SPACE_ID="someone/instantcharacter-studio", INSTANTCHARACTER_MODELS="tiny",
               INSTANTCHARACTER_PRELOAD="0", PYTHONPATH=str(REPO), INSTANTCHARACTER_HOME=str(tmp_path))
    env.pop("SPACES_ZERO_GPU", None)
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "BUILT Blocks" in done.stdout, done.stderr[-2000:]
