"""Issue 21's rules without a launched studio (fast): client values parsed as their own kinds, hub ids, visitor
limits, library ownership by folder, ``--guest`` access, the hub LoRA size cap and the compiled-shape cap.
The same rows are attacked through the raw queue protocol in ``test_security.py`` (slow)."""

from __future__ import annotations

from argparse import Namespace
from types import SimpleNamespace

import pytest

from app import client_input
from app.context import Access, StudioContext, StudioSettings
from app.errors import OwnerOnlyError, StudioInputError
from app.visitor_limits import VisitorLimitError, VisitorLimits, check_admission
from core.io.hub_ids import HubId, HubIdError
from core.limits import short_repr


# ------------------------------------------------------------------------------------------------ hub ids
@pytest.mark.parametrize("text, repo, filename", [
    ("owner/repo", "owner/repo", None),
    ("XLabs-AI/flux-lora-collection/anime_lora.safetensors", "XLabs-AI/flux-lora-collection",
     "anime_lora.safetensors"),
    ("a.b/c_d/sub/file.safetensors", "a.b/c_d", "sub/file.safetensors"),
])
def test_hub_ids_by_the_hubs_rules(text, repo, filename):
    assert HubId.parse(text) == HubId(repo, filename)
    assert str(HubId.parse(text)) == text


@pytest.mark.parametrize("text, rule", [
    ("tests/core/../../etc/x.safetensors", "a file in a repo has no empty, '.' or '..' parts"),
    ("tests//x.safetensors", "owner and repo are names"), ("a/b//x.safetensors", "a file in a repo has no empty"),
    ("a/b/./x.safetensors", "a file in a repo has no empty, '.' or '..' parts"),
    ("../repo", "owner and repo are names"), ("owner/..", "owner and repo are names"),
    ("owner/re--po", "owner and repo are names"), ("-owner/repo", "owner and repo are names"),
    ("owner", "owner and repo are names"), ("/abs/path", "owner and repo are names"),
])
def test_not_hub_ids(text, rule):
    with pytest.raises(HubIdError, match=rule.replace(".", r"\.").replace("(", r"\(")):
        HubId.parse(text)


# ------------------------------------------------------------------------------------------------ regions
def test_a_region_is_a_layout_or_box_never_a_file(tmp_path):
    existing = tmp_path / "mask.png"
    from PIL import Image

    Image.new("L", (8, 8), 255).save(existing)
    assert client_input.region("whole panel") is None
    assert client_input.region("left").box == (0.0, 0.0, 0.5, 1.0)
    assert client_input.region("box:0,0,0.5,0.5").box == (0.0, 0.0, 0.5, 0.5)
    messages = []
    for value in (str(existing), str(tmp_path / "missing.png")):
        with pytest.raises(StudioInputError) as caught:
            client_input.region(value, "the region to redo")
        messages.append(str(caught.value).replace(short_repr(value), "<value>"))
    assert messages[0] == messages[1] == (  # the same words whether the file exists or not
        "the region to redo <value> must be one of whole, left, right, top, bottom, left-third, center-third, "
        "right-third, grid:RxC:N or box:x0,y0,x1,y1 (fractions 0-1)")
    with pytest.raises(StudioInputError, match="must be a layout name or box"):
        client_input.region({"path": str(existing)})


# ------------------------------------------------------------------------------------------------ LoRAs
def test_a_visitor_names_a_hub_lora_not_in_the_cache(tmp_path):
    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"),
                        access=Access(exposed=True, owner="ann", why="open to the network"))
    visitor = SimpleNamespace(username="bob", session_hash="s1")
    from core.loading.loras import LoraError

    with pytest.raises(LoraError, match="downloading LoRAs is for the studio's owner only"):
        client_input.loras([["nobody-here/no-such-lora", 1.0, ""]], ctx, visitor)
    open_ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"),
                             access=Access(exposed=True, owner="ann", why="x", limits=VisitorLimits(downloads=True)))
    assert open_ctx.access.may_download(visitor) and not ctx.access.may_download(visitor)


def test_hub_lora_size_cap(monkeypatch):
    import huggingface_hub

    from core.loading.loras import LoraError, hub_lora_file

    class FakeApi:
        def get_paths_info(self, repo, paths):
            return [SimpleNamespace(size=3 * 2**30)]

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(LoraError) as caught:
        hub_lora_file(HubId("big/lora", "big.safetensors"), download=True)
    assert str(caught.value) == "LoRA 'big/lora/big.safetensors' is 3,072 MB: at most 2,048 MB is downloaded"


def test_load_errors_name_no_server_paths():
    from core.loading.loras import redacted

    assert redacted(OSError("no file /srv/studio/x/y.safetensors in owner/repo")) == (
        "no file <path> in owner/repo")


# ------------------------------------------------------------------------------------------------ the fair queue
def _event(user, session, host):
    return SimpleNamespace(username=user, session_hash=session, request=SimpleNamespace(client=SimpleNamespace(
        host=host)))


def _incoming(user, session, host):
    return SimpleNamespace(username=user, session_hash=session, client=SimpleNamespace(host=host))


def test_admission_limits_per_session_address_and_total():
    access = Access(exposed=True, owner="ann", why="x", limits=VisitorLimits(jobs_per_session=1,
                                                                             jobs_per_address=2, total=3))
    waiting = [_event("bob", "s1", "10.0.0.1"), _event("eve", "s2", "10.0.0.1"), _event("ann", "o", "10.0.0.1")]
    demo = SimpleNamespace(_queue=SimpleNamespace(event_queue_per_concurrency_id={
        "gpu": SimpleNamespace(queue=waiting)}))
    with pytest.raises(VisitorLimitError, match=r"you have 1 job\(s\) waiting already"):
        check_admission(demo, access, _incoming("bob", "s1", "10.0.0.9"))
    with pytest.raises(VisitorLimitError, match="2 jobs from your address are waiting already: at most 2"):
        check_admission(demo, access, _incoming("bob", "s3", "10.0.0.1"))
    check_admission(demo, access, _incoming("ann", "o", "10.0.0.1"))  # the owner: never refused
    check_admission(demo, access, _incoming("zoe", "s4", "10.0.0.2"))
    waiting.append(_event("zoe", "s4", "10.0.0.3"))
    with pytest.raises(VisitorLimitError, match="the studio's queue holds 3 visitors' jobs"):
        check_admission(demo, access, _incoming("max", "s5", "10.0.0.4"))


def test_budget_for_visitors_only():
    access = Access(exposed=True, owner="ann", why="x", limits=VisitorLimits(budget=10))
    with pytest.raises(VisitorLimitError) as caught:
        access.check_budget(SimpleNamespace(username="bob"), 4096, 4096, 100, 4)
    assert str(caught.value) == (
        "this request is 6,711 megapixel-steps (4096x4096, 100 steps, 4 image(s)): visitors of this studio may ask "
        "for at most 10 (fewer steps, images or pixels; the owner sets --visitor-budget)")
    access.check_budget(SimpleNamespace(username="ann"), 4096, 4096, 100, 4)
    assert access.images_within_budget(SimpleNamespace(username="bob"), 512, 512, 10, 8) == 3
    assert Access(exposed=False).images_within_budget(None, 4096, 4096, 100, 8) == 8


# ------------------------------------------------------------------------------------------------ access
def test_guest_logins_make_a_studio_exposed_and_warn_without_auth():
    from app.studio import access_for, exposure_warnings, logins

    args = Namespace(host="127.0.0.1", share=False, auth="ann:pw", guest=["bob:pw"])
    access = access_for(args)
    assert access.exposed and not access.is_owner(SimpleNamespace(username="bob"))
    assert access.is_owner(SimpleNamespace(username="ann"))
    assert logins(Namespace(auth=None, guest=["bob:pw"])) == [("bob", "pw")]
    assert exposure_warnings("127.0.0.1", False, None, ["bob:pw"])[0] == (
        "--guest without --auth: every login is a visitor, so nobody can change settings, unload models or train "
        "from the page (add --auth USER:PASS for the owner)")
    assert not access_for(Namespace(host="127.0.0.1", share=False, auth=None, guest=[])).exposed


# ------------------------------------------------------------------------------------------------ library
def test_library_ownership_is_by_folder(tmp_path, character_files):
    from app.tabs.library import LibraryEvents

    from app.character_library import CharacterLibrary

    ctx = StudioContext(StudioSettings(models="tiny", output_dir=tmp_path / "out"),
                        library=CharacterLibrary(tmp_path / "library"),  # not the session's, which others fill
                        access=Access(exposed=True, owner="ann", why="x"))
    events = LibraryEvents(ctx)
    ann, bob, eve = (SimpleNamespace(username=u, session_hash=u) for u in ("ann", "bob", "eve"))
    events._save(str(character_files[0]), "Mia", 0.9, ann)
    with pytest.raises(OwnerOnlyError, match=r"the library already has \[Mia\] under that name"):
        events._save(str(character_files[1]), "mia!", 0.5, bob)
    with pytest.raises(OwnerOnlyError, match=r"may delete it"):
        events._delete("Mia", bob)
    events._save(str(character_files[1]), "Rex", 0.5, bob)
    with pytest.raises(OwnerOnlyError, match=r"\[Rex\]"):
        events._save(str(character_files[0]), "rex?", 0.5, eve)
    events._save(str(character_files[0]), "REX", 0.6, bob)  # his own
    events._delete("REX", bob)
    assert ctx.library.names() == ["Mia"]


# ------------------------------------------------------------------------------------------------ compile
def test_compiled_shapes_are_capped():
    from core.loading.speed import MAX_COMPILED_SHAPES, compile_decision

    assert compile_decision(set(), (1024, 1024, 1, False)) == "compile"
    assert compile_decision({(1024, 1024, 1, False)}, (1024, 1024, 1, False)) == "reuse"
    assert compile_decision(set(), (1040, 1024, 1, False)) == "eager"  # not a bucket
    full = {(1024, 1024, n, False) for n in range(MAX_COMPILED_SHAPES)}
    assert compile_decision(full, (512, 512, 1, False)) == "eager"


@pytest.mark.parametrize("value", ["false", 0, None])
def test_randomize_seed_is_a_checkbox_value(value):
    from app.client_input import flag

    with pytest.raises(StudioInputError, match="randomize seed must be true or false"):
        flag(value, "randomize seed")
    assert flag(True, "randomize seed") is True and flag(False, "randomize seed") is False
