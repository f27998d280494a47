"""Shared fixtures: the golden reference bundle and the tiny random-weight bundle, built once per session."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
if not GOLDEN.is_dir():  # CI clones next to ../shared; a developer checkout may sit elsewhere
    GOLDEN = Path(os.environ.get("INSTANTCHARACTER_GOLDEN", "/work/shared/golden"))


@pytest.fixture(scope="session", autouse=True)
def user_home(tmp_path_factory):
    """Keeps every test's cache and user data out of the real user folders."""
    home = tmp_path_factory.mktemp("home")
    # The system's temp folder moves into a folder of its own, so that Gradio, which serves anything under the temp
    # folder, no longer serves pytest's other folders (the studio's outputs, library, runs, stories): a launched
    # studio serves only what it names, as on a user's disk where these folders are not temporary.
    tempfile.tempdir = str(tmp_path_factory.mktemp("system-temp"))
    old = os.environ.get("INSTANTCHARACTER_HOME")
    os.environ["INSTANTCHARACTER_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("INSTANTCHARACTER_HOME", None)
    else:
        os.environ["INSTANTCHARACTER_HOME"] = old


@pytest.fixture(scope="session")
def golden_dir():
    if not (GOLDEN / "bundle").is_dir():
        pytest.skip(f"golden reference not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_case(golden_dir):
    return json.loads((golden_dir / "case.json").read_text())


@pytest.fixture(scope="session")
def golden_expected(golden_dir):
    return dict(np.load(golden_dir / "expected.npz"))


@pytest.fixture(scope="session")
def golden_pipe(golden_dir, user_home):
    import torch

    from core.models.pipeline import InstantCharacterPipeline

    pipe = InstantCharacterPipeline.from_pretrained(str(golden_dir / "bundle"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def one_thread():
    """Torch on one thread for this test only (the tiny models run faster so on a busy machine); the count is restored
    after it, since a count left behind would change the maths of the tests that follow."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_models(user_home):
    """A tiny random-weight models directory (flux/, siglip/, dinov2/, adapter.safetensors)."""
    from core.loading.tiny import ensure_tiny_bundle

    return ensure_tiny_bundle()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_models):
    import torch

    from core.models.pipeline import InstantCharacterPipeline

    pipe = InstantCharacterPipeline.from_pretrained(str(tiny_models), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe
