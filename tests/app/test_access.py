"""Who owns a studio: the launch flags decide, and the warnings say what visitors can and cannot do."""

from __future__ import annotations

from argparse import Namespace
from types import SimpleNamespace

import pytest

from app.context import Access
from app.errors import OwnerOnlyError
from app.studio import access_for, exposure_warnings, logins


def args(**given):
    base = dict(host="127.0.0.1", share=False, auth=None, guest=[])
    return Namespace(**(base | given))


def test_loopback_studio_everyone_is_the_owner():
    access = access_for(args())
    assert not access.exposed and access.is_owner(None) and access.notice() == ""
    assert exposure_warnings("127.0.0.1", False, None) == []


@pytest.mark.parametrize("given, why", [(dict(host="0.0.0.0"), "open to the network (0.0.0.0)"),
                                        (dict(share=True), "shared with a public link")])
def test_exposed_studio_without_login_turns_owner_actions_off(given, why):
    access = access_for(args(**given))
    assert access.exposed and access.why == why and not access.is_owner(SimpleNamespace(username=None))
    with pytest.raises(OwnerOnlyError, match=r"turned off: this studio is .*--auth USER:PASS"):
        access.check_owner(None, "Changing the settings")
    warnings = exposure_warnings(given.get("host", "127.0.0.1"), given.get("share", False), None)
    assert any("consider --auth" in w for w in warnings)
    assert any("visitors can generate" in w and "cannot read or write files outside" in w
               and "nobody can change settings or train" in w for w in warnings)


def test_owner_login_and_guests():
    given = args(host="0.0.0.0", auth="ann:pw", guest=["bob:pw2"])
    assert logins(given) == [("ann", "pw"), ("bob", "pw2")]
    access = access_for(given)
    assert access.owner == "ann"
    assert access.is_owner(SimpleNamespace(username="ann"))
    with pytest.raises(OwnerOnlyError, match="owner only"):
        access.check_owner(SimpleNamespace(username="bob"), "Training")
    assert any("the owner login 'ann' can do everything" in w for w in exposure_warnings("0.0.0.0", False, "ann:pw"))


# --guest without --auth is allowed since issue 21 (every login a visitor, with a warning: test_client_input.py)
@pytest.mark.parametrize("given, message", [(dict(auth="ann:pw", guest=["ann:x"]), "owner's name"),
                                            (dict(auth="ann"), "USER:PASS")])
def test_bad_logins(given, message):
    with pytest.raises(ValueError, match=message):
        logins(args(**given))


def test_settings_apply_is_owner_only(tmp_path):
    import gradio as gr

    from app.context import StudioContext, StudioSettings
    from app.tabs.settings import SettingsEvents

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"),
                        access=Access(exposed=True, owner="ann", why="open to the network (0.0.0.0)"))
    events = SettingsEvents(ctx)
    target = tmp_path / "elsewhere"
    with pytest.raises(gr.Error, match="owner"):
        events.apply("tiny", "", "", "", "", "auto", str(target), request=SimpleNamespace(username="bob"))
    assert not target.exists() and ctx.settings.output_dir == tmp_path / "out"
    events.apply("tiny", "", "", "", "", "auto", str(target), request=SimpleNamespace(username="ann"))
    assert ctx.settings.output_dir == target and target.is_dir()
