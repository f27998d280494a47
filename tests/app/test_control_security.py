"""The control panel's handlers over Gradio's raw protocol (what a browser, or a hostile visitor, sends): "Make
from photo" and the panel's state updates refuse files outside the studio's folders and leak nothing; the Recall of
control rows reads nothing from outside. (``tests/app/test_security.py`` sends every payload family to every
dependency; here each new handler is driven by name.)"""

from __future__ import annotations

import pytest

from .test_security import (RawClient, _outcome, copies_of_secret, exposed_studio, file_data, leaked,  # noqa: F401
                            secret, snapshot)

pytestmark = pytest.mark.slow


def _deps_with_target(client: RawClient, elem_prefix: str) -> list[dict]:
    """The dependencies triggered by components whose elem_id starts with ``elem_prefix``."""
    found = []
    for dep in client.dependencies:
        for target_id, _ in dep.get("targets") or []:
            props = client.components.get(target_id, {}).get("props", {})
            if str(props.get("elem_id") or "").startswith(elem_prefix):
                found.append(dep)
    return found


def test_make_from_photo_refuses_outside_files(exposed_studio, secret):
    proc, url, home = exposed_studio
    client = RawClient(url)
    before = snapshot(secret["dir"])
    makes = _deps_with_target(client, "control-make-")
    assert len(makes) == 2
    for dep in makes:
        for path in (secret["png"], secret["link"], "../" * 12 + str(secret["png"]).lstrip("/")):
            messages = client.call(dep, [file_data(path), "canny"])
            ok, message = _outcome(messages)
            assert not ok, message
            assert not leaked(messages, secret, client)
        ok, message = _outcome(client.call(dep, [None, "canny"]))
        assert not ok and "upload a photo or drawing first" in message
    assert snapshot(secret["dir"]) == before and copies_of_secret([home], secret) == []
    assert proc.poll() is None and client.alive()


def test_control_state_updates_take_values_only(exposed_studio, secret):
    """Each panel component's change handler stores the value in the session's state (checked when a run uses it,
    through the path policy): nothing is read, and nothing comes back but the state."""
    proc, url, home = exposed_studio
    client = RawClient(url)
    updates = _deps_with_target(client, "control-image-") + _deps_with_target(client, "control-kind-")
    assert updates
    for dep in updates:
        messages = client.call(dep, [file_data(secret["png"])] * len(dep["inputs"]))
        assert not leaked(messages, secret, client)
    assert copies_of_secret([home], secret) == [] and proc.poll() is None
