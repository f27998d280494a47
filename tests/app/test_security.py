"""A hostile visitor against a launched studio, over Gradio's raw protocol (what the browser itself sends).

``api_visibility="private"`` only hides a handler from the API page: ``POST /gradio_api/queue/join {fn_index: N}``
calls it all the same. So the attack goes through **every** dependency of the page, each with payloads that name
files outside the studio's folders (absolute, ``../``, a symlink, story ``character`` lines, a TOML config), and
checks that no content from outside comes back, nothing outside is written or created, and the server keeps
serving. A second launch, open to the network with an owner login, checks the owner-only actions per login.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core.limits import short_repr

from .conftest import free_port

pytestmark = pytest.mark.slow

TIMEOUT = 60  # seconds for one event to finish


# ------------------------------------------------------------------------------------------------ the raw protocol
class RawClient:
    """Calls a dependency by ``fn_index`` the way the page does (queue/join then the event stream, or
    run/predict for unqueued events), logged in or not."""

    def __init__(self, url: str, login: tuple[str, str] | None = None):
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=TIMEOUT, follow_redirects=True)
        if login is not None:
            response = self.http.post(f"{self.url}/login", data={"username": login[0], "password": login[1]})
            assert response.status_code == 200, response.text
        self.config = self.http.get(f"{self.url}/config").json()
        self.components = {c["id"]: c for c in self.config["components"]}
        self.api = f"{self.url}{self.config.get('api_prefix', '/gradio_api')}"

    @property
    def dependencies(self) -> list[dict]:
        return [d for d in self.config["dependencies"] if d.get("backend_fn")]

    def call(self, dep: dict, data: list, session: str | None = None) -> list[dict]:
        """Every message the server sent about this event (its outputs included), as parsed JSON."""
        session = session or uuid.uuid4().hex[:10]
        if not dep.get("queue", True):
            response = self.http.post(f"{self.api}/run/predict", json=self._body(dep, data, session))
            return [{"status": response.status_code, "body": response.text}]
        joined = self.join(dep, data, session)
        if joined.status_code != 200:
            return [{"status": joined.status_code, "body": joined.text}]
        return self.messages(session)

    def _body(self, dep: dict, data: list, session: str) -> dict:
        trigger = dep["targets"][0][0] if dep.get("targets") else None
        return {"data": data, "fn_index": dep["id"], "session_hash": session, "event_data": None,
                "trigger_id": trigger}

    def join(self, dep: dict, data: list, session: str) -> httpx.Response:
        """Puts one event in the queue without waiting for it (``messages`` reads what it did)."""
        return self.http.post(f"{self.api}/queue/join", json=self._body(dep, data, session))

    def upload(self, path: Path) -> dict:
        """``path`` uploaded as the page does: a FileData in Gradio's upload cache."""
        with open(path, "rb") as handle:
            response = self.http.post(f"{self.api}/upload", files={"files": (Path(path).name, handle, "image/png")})
        assert response.status_code == 200, response.text
        return file_data(response.json()[0])

    def messages(self, session: str, events: int = 1) -> list[dict]:
        """The messages of the session's next ``events`` events, until each is completed."""
        messages, done = [], 0
        deadline = time.monotonic() + TIMEOUT
        try:
            with self.http.stream("GET", f"{self.api}/queue/data", params={"session_hash": session}) as stream:
                for line in stream.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    message = json.loads(line[5:])
                    messages.append(message)
                    if message.get("msg") in ("process_completed", "unexpected_error"):
                        done += 1
                    if done >= events or message.get("msg") == "close_stream":
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"session {session}'s events did not finish in {TIMEOUT} s")
        except httpx.RemoteProtocolError as exc:  # the stream ended early: what came so far still counts
            messages.append({"msg": "stream_closed", "error": str(exc)})
        return messages

    def alive(self) -> bool:
        return self.http.get(f"{self.url}/config").status_code == 200


# ------------------------------------------------------------------------------------------------ hostile payloads
def file_data(path: Path | str) -> dict:
    return {"path": str(path), "url": None, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def payloads(secret: dict) -> dict[str, dict]:
    """Named payload families: a value per component type, each naming something outside the roots."""
    outside, target = secret["dir"], secret["dir"] / "written"
    story = (f"title: leak\nsteps: 1000000000\nsize: 64x64\nfont: {secret['txt']}\ncharacter Spy: {secret['png']}\n"
             f"character Up: {'../' * 12}{str(secret['png']).lstrip('/')}\n---\n[Spy] reads [Up]\n")
    toml = (f'output_dir = "{target}"\n[models]\nsource = "tiny"\n[[stages]]\nname = "x"\ndata = "unpaired"\n'
            f'resolution = 512\nsteps = 1\n[data]\nunpaired = "{outside}"\n')
    relative = "../" * 12 + str(secret["txt"]).lstrip("/")
    return {
        "absolute": {"text": str(secret["txt"]), "file": file_data(secret["png"]), "number": 1},
        "relative": {"text": relative, "file": file_data(relative), "number": 2},
        "symlink": {"text": str(secret["link"]), "file": file_data(secret["link"]), "number": 1},
        "folder": {"text": str(target), "file": file_data(outside), "number": 1},
        "story": {"text": story, "file": file_data(secret["png"]), "number": 10**30},
        "toml": {"text": toml, "file": file_data(secret["txt"]), "number": -1},
    }


def value_for(component: dict, family: dict):
    kind = component["type"]
    if kind in ("textbox", "code", "dropdown", "radio", "markdown"):
        return family["text"]
    if kind in ("number", "slider"):
        return family["number"]
    if kind == "checkbox":
        return True
    if kind in ("image", "file"):
        return family["file"]
    if kind == "imageeditor":
        return {"background": family["file"], "layers": [family["file"]], "composite": family["file"]}
    if kind == "gallery":
        return [{"image": family["file"], "caption": family["text"]}]
    if kind == "dataframe":
        return {"headers": ["a"], "data": [[family["text"]]], "metadata": None}
    return None  # state (server-side: the client's value is ignored), timers, buttons


def leaked(messages: list[dict], secret: dict, client: RawClient) -> list[str]:
    """What in ``messages`` shows a secret: its text, or a served file with its bytes."""
    found = []
    text = json.dumps(messages)
    if secret["token"] in text:
        found.append("the secret text came back")
    for blob in _file_refs(messages):
        url = blob.get("url") or f"{client.api}/file={blob.get('path')}"
        response = client.http.get(url)
        if response.status_code == 200 and (secret["token"].encode() in response.content
                                           or response.content == secret["png_bytes"]):
            found.append(f"a secret file was served at {url}")
    return found


def _file_refs(value):
    if isinstance(value, dict):
        if value.get("meta", {}).get("_type") == "gradio.FileData" or ("path" in value and "url" in value):
            yield value
        for item in value.values():
            yield from _file_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _file_refs(item)


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in folder.rglob("*") if not p.is_symlink()}


def copies_of_secret(roots: list[Path], secret: dict) -> list[str]:
    """Files inside the studio's folders holding the secret's bytes (a copy into a render folder or a ZIP)."""
    hits = []
    for root in roots:
        for path in root.rglob("*") if root.is_dir() else []:
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 50 * 2**20:
                data = path.read_bytes()
                if secret["token"].encode() in data or (data and data == secret["png_bytes"]):
                    hits.append(str(path))
    return hits


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """Files outside every root of the studio: a text with a unique token, a PNG, and a symlink to the text."""
    folder = tmp_path_factory.mktemp("outside-the-studio")
    token = f"SECRET-{uuid.uuid4().hex}"
    txt = folder / "secret.txt"
    txt.write_text(f"HF_TOKEN={token}\n")
    png = folder / "secret.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(png, pnginfo=_text_chunk(token))
    link = folder / "link.txt"
    link.symlink_to(txt)
    return {"dir": folder, "txt": txt, "png": png, "link": link, "token": token, "png_bytes": png.read_bytes()}


def _text_chunk(token: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("secret", token)
    return info


def launch_studio(home: Path, extra: list[str], tries: int = 3) -> tuple[subprocess.Popen, str]:
    """The studio started in a subprocess on a free port; started again on another when the port was taken before
    the studio bound it (the studio needs seconds to start: another program, or a poll that connected to itself,
    may hold it by then)."""
    port = free_port()
    env = dict(os.environ, INSTANTCHARACTER_HOME=str(home), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(home / "studio.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "--models", "tiny", "--port", str(port), *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = (home / "studio.log").read_text()
            if "Cannot find empty port" in said and tries > 1:
                return launch_studio(home, extra, tries - 1)
            raise AssertionError(f"the studio exited: {said[-2000:]}")
        try:
            if httpx.get(url + "config", timeout=2).status_code in (200, 401):
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("the studio did not start in 180 s")


@pytest.fixture(scope="module")
def exposed_studio(tmp_path_factory):
    """The studio as a LAN bind without a login (like --share): every visitor is anonymous."""
    home = tmp_path_factory.mktemp("exposed-home")
    proc, url = launch_studio(home, ["--host", "0.0.0.0"])
    yield proc, url, home
    proc.terminate()
    proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ tests
def test_every_dependency_refuses_outside_paths(exposed_studio, secret):
    proc, url, home = exposed_studio
    client = RawClient(url)
    before = snapshot(secret["dir"])
    families = payloads(secret)
    problems = []
    for dep in client.dependencies:
        for family_name, family in families.items():
            data = [value_for(client.components.get(i, {"type": "?"}), family) for i in dep["inputs"]]
            messages = client.call(dep, data)
            for leak in leaked(messages, secret, client):
                problems.append(f"dependency {dep['id']} ({dep.get('api_name')}), {family_name}: {leak}")
            if proc.poll() is not None:
                pytest.fail(f"the server died on dependency {dep['id']} ({family_name})")
    assert not problems, "\n".join(problems)
    assert snapshot(secret["dir"]) == before, "something was written or created outside the studio's folders"
    assert not (secret["dir"] / "written").exists()
    assert copies_of_secret([home], secret) == []
    assert client.alive()


def test_file_route_serves_nothing_outside(exposed_studio, secret):
    _, url, _ = exposed_studio
    client = RawClient(url)
    for path in (secret["txt"], secret["png"], secret["link"], "/etc/passwd", "/proc/self/environ"):
        response = client.http.get(f"{client.api}/file={path}")
        assert response.status_code in (403, 404), (path, response.status_code)
        assert secret["token"].encode() not in response.content


def test_recall_of_a_file_outside_reads_nothing(exposed_studio, secret, tmp_path):
    """Recall, the edit section's Recall and "Edit this" (every dependency fed by the Recall file box) given a PNG
    outside the studio's folders, made by the studio with the secret in its prompt: refused, nothing of it comes
    back. Gradio refuses such a file before the handler (only its upload cache is accepted for a file box); the
    handler's own refusal, the path policy's message, is in ``test_recall_paths.py``. Uploaded, the same PNG
    recalls as before."""
    from core.io.metadata import GenerationRecord, save_png

    proc, url, _ = exposed_studio
    client = RawClient(url)
    made = save_png(Image.new("RGB", (32, 32), "teal"), tmp_path / "made.png",
                    GenerationRecord(prompt=f"a cat {secret['token']}", seed=3, width=32, height=32))
    box = next(i for i, c in client.components.items()
               if c["type"] == "file" and str(c.get("props", {}).get("label", "")).startswith("A PNG made by"))
    deps = [d for d in client.dependencies if d["inputs"] == [box]]
    assert len(deps) >= 4, "Recall, the edit section's and the control section's Recall, Edit this"
    relative = "../" * 12 + str(made).lstrip("/")
    for dep in deps:
        for value in (file_data("/etc/passwd"), file_data(made), file_data(relative), str(made)):
            messages = client.call(dep, [value])
            assert not _succeeded(messages), (dep["id"], value, messages)
            text = json.dumps(messages)
            assert secret["token"] not in text and "root:" not in text, (dep["id"], value)
            assert leaked(messages, secret, client) == [], (dep["id"], value)
        assert proc.poll() is None and client.alive()
    uploaded = client.upload(made)
    for dep in deps:
        messages = client.call(dep, [uploaded])
        assert _succeeded(messages), (dep["id"], messages[-1])
    recalled = client.call(_dep(client, api_name="recall"), [uploaded])
    assert f"a cat {secret['token']}" in json.dumps(recalled)


def _succeeded(messages: list[dict]) -> bool:
    """Whether a queued event completed, or an unqueued one answered 200."""
    last = messages[-1] if messages else {}
    return last.get("status") == 200 if "status" in last else bool(last.get("success"))


def _dep(client: RawClient, api_name: str | None = None, label: str | None = None) -> dict:
    """The dependency triggered by the button labelled ``label`` (or with ``api_name``)."""
    for dep in client.dependencies:
        if api_name and dep.get("api_name") == api_name:
            return dep
        if label:
            target = client.components.get(dep["targets"][0][0], {}) if dep.get("targets") else {}
            if target.get("props", {}).get("value") == label:
                return dep
    raise AssertionError(f"no dependency {api_name or label}")


def _outcome(messages: list[dict]) -> tuple[bool, str]:
    last = messages[-1] if messages else {}
    output = last.get("output", {})
    return bool(last.get("success")), json.dumps(output.get("error") or output.get("data") or last)[:300]


def _apply_settings(client: RawClient, out_dir: Path) -> tuple[bool, str]:
    dep = _dep(client, label="Apply settings")
    values = {"textbox": "tiny", "dropdown": "auto"}
    data = []
    for i in dep["inputs"]:
        component = client.components[i]
        label = component.get("props", {}).get("label", "")
        if component["type"] == "dropdown":  # "auto" where it is a choice (the preset), else the first (speed: off)
            choices = [c[1] if isinstance(c, (list, tuple)) else c for c in component["props"].get("choices", [])]
            data.append("auto" if "auto" in choices or not choices else choices[0])
            continue
        data.append(str(out_dir) if label == "Output folder" else
                    "tiny" if label.startswith("Models") else
                    values.get(component["type"], "") if not label.startswith(("FLUX", "SigLIP", "DINO", "Adapter"))
                    else "")
    return _outcome(client.call(dep, data))


def test_owner_only_actions_for_anonymous_visitors(exposed_studio, tmp_path):
    _, url, _ = exposed_studio
    client = RawClient(url)
    ok, message = _apply_settings(client, tmp_path / "chosen-by-visitor")
    assert not ok and "turned off" in message and "--auth" in message
    assert not (tmp_path / "chosen-by-visitor").exists()
    ok, message = _outcome(client.call(_dep(client, label="Load"), ["my-character.toml"]))
    assert not ok and "turned off" in message
    ok, message = _outcome(client.call(_dep(client, label="Use the last run's adapter"), []))
    assert not ok and "Changing the settings is turned off" in message  # no run's path for a visitor


def test_owner_login_may_do_what_guests_may_not(tmp_path_factory, tmp_path):
    home = tmp_path_factory.mktemp("owner-home")
    proc, url = launch_studio(home, ["--host", "0.0.0.0", "--auth", "ann:s3cret", "--guest", "bob:visitor"])
    try:
        assert httpx.get(url + "config").status_code == 401  # no anonymous access at all with a login
        guest = RawClient(url, login=("bob", "visitor"))
        ok, message = _apply_settings(guest, tmp_path / "guest-folder")
        assert not ok and "owner" in message
        assert not (tmp_path / "guest-folder").exists()
        owner = RawClient(url, login=("ann", "s3cret"))
        ok, message = _apply_settings(owner, tmp_path / "owner-folder")
        assert ok, message
        assert (tmp_path / "owner-folder").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ issue 21
# A second launch: loopback host (as behind a reverse proxy) with an owner and two guest logins, small visitor
# limits, and a LoRA in the studio's loras/ folder. One launch serves every row of issue 21 that a studio shows.
GUEST_ARGS = ["--host", "127.0.0.1", "--auth", "ann:s3cret", "--guest", "bob:visitor", "--guest", "eve:visitor",
              "--visitor-jobs-per-session", "1", "--visitor-jobs-per-address", "2", "--visitor-budget", "10"]
STORY = "title: Shared\nsize: 32x32\nsteps: 2\nseed: 3\n---\na quiet sea [NC]\n"


@pytest.fixture(scope="module")
def guests(tmp_path_factory, tiny_lora):
    import shutil
    from types import SimpleNamespace

    home = tmp_path_factory.mktemp("guests-home")
    (home / "data" / "loras").mkdir(parents=True)
    shutil.copy(tiny_lora, home / "data" / "loras" / "style.safetensors")
    proc, url = launch_studio(home, GUEST_ARGS)
    yield SimpleNamespace(proc=proc, url=url, home=home, outputs=home / "data" / "outputs",
                          ann=RawClient(url, login=("ann", "s3cret")), bob=RawClient(url, login=("bob", "visitor")),
                          eve=RawClient(url, login=("eve", "visitor")))
    proc.terminate()
    proc.wait(timeout=30)


def _error(messages: list[dict]) -> str | None:
    """The one-line refusal in ``messages``: a refused join's ``detail`` or the event's error; None on success."""
    last = messages[-1] if messages else {}
    if "status" in last:
        try:
            return str(json.loads(last["body"]).get("detail"))
        except ValueError:
            return last["body"]
    if last.get("success"):
        return None
    return str((last.get("output") or {}).get("error") or json.dumps(last)[:300])


def _generate_data(client: RawClient, **fields) -> list:
    from app.tabs.generate_events import form_values

    dep = _dep(client, api_name="generate")
    values = form_values(**({"prompt": "a red kite", "randomize_seed": False, "steps": 2, "width": 32,
                             "height": 32} | fields))
    return values + [None] * (len(dep["inputs"]) - len(values))  # the session's paths and mask specs (state)


def _generate(client: RawClient, session: str | None = None, **fields) -> list[dict]:
    return client.call(_dep(client, api_name="generate"), _generate_data(client, **fields), session)


def test_an_unreadable_canvas_is_refused_in_one_line(guests, tmp_path):
    """A visitor's Generate whose routing canvas holds an empty image (what a page sends when it sends the canvas
    before drawing it) is refused as it joins the queue, in one line; the same Generate with the canvas whole runs."""
    empty, layer = tmp_path / "background.png", tmp_path / "layer_0.png"
    empty.write_bytes(b"")
    Image.new("RGBA", (64, 64), (255, 255, 255, 255)).save(layer)
    client = guests.bob

    def canvas(background: Path) -> dict:
        return {"background": client.upload(background), "layers": [client.upload(layer)],
                "composite": client.upload(background)}

    assert _error(_generate(client, canvas=canvas(empty))) == (
        "The canvas 'Routing masks' came with an image that cannot be read: wait until it shows its image, then try "
        "again (upload the image again if it stays empty)")
    assert _error(_generate(client, canvas=canvas(layer))) is None


def test_guest_logins_are_visitors_on_a_loopback_host(guests, tmp_path):
    """Row 6: ``--guest`` means visitor whatever the host."""
    ok, message = _apply_settings(guests.bob, guests.outputs)
    assert not ok and "is for the studio's owner only (log in as the --auth user)" in message, message
    ok, message = _apply_settings(guests.ann, guests.outputs)
    assert ok, message
    log = (guests.home / "studio.log").read_text()
    assert "--guest logins are visitors even on a loopback --host" in log


def _library_data(client: RawClient, dep: dict, image: dict, name: str, scale: float) -> list:
    """The inputs of a "Save to library" button by component: the image, the name, the scale (a description,
    where the button has one, left empty)."""
    values = []
    for i in dep["inputs"]:
        component = client.components[i]
        label = str(component.get("props", {}).get("label") or "").lower()
        values.append(image if component["type"] == "image" else scale if component["type"] in ("slider", "number")
                      else name if "name" in label else "")
    return values


def test_library_owner_check_is_on_the_folder(guests, secret):
    """Row 3: a guest cannot replace the owner's Mia with ``mia!`` (same folder); guests add their own."""
    save = _dep(guests.ann, label="Save to library")

    def saved(client: RawClient, name: str, scale: float) -> str | None:
        return _error(client.call(save, _library_data(client, save, client.upload(secret["png"]), name, scale)))

    assert saved(guests.ann, "Mia", 0.9) is None
    stored = guests.home / "data" / "library" / "mia" / "character.json"
    before = stored.read_bytes()
    refused = ("the library already has [Mia] under that name: only the studio's owner or whoever added it may "
               "replace it (choose another name)")
    assert saved(guests.bob, "mia!", 0.5) == refused
    assert stored.read_bytes() == before
    assert saved(guests.bob, "Rex", 0.5) is None
    assert saved(guests.eve, "rex", 0.5) == refused.replace("Mia", "Rex")
    assert saved(guests.bob, "REX", 0.7) is None  # his own


def test_hub_looking_lora_ids_are_never_local_paths(guests, secret, tiny_lora):
    """Row 2: a LoRA source whose first parts are a folder of the server's working folder, with ``..`` or an
    empty part after them, is refused as a hub id, with the same words whether the file exists or not."""
    import shutil

    evil = secret["dir"] / "evil.safetensors"
    shutil.copy(tiny_lora, evil)
    root = Path(__file__).resolve().parents[2]
    climb = "tests/core/" + "../" * (len(root.parts) + 1) + str(evil).lstrip("/")
    for client in (guests.ann, guests.bob):
        for source in (climb, climb.replace("evil", "missing")):
            assert _error(_generate(client, lora1_source=source)) == (
                f"LoRA {short_repr(source, 80)} is not a hub id: a file in a repo has no empty, '.' or '..' parts")
        assert _error(_generate(client, lora1_source="tests//x.safetensors")) == (
            "LoRA 'tests//x.safetensors' is not a hub id: owner and repo are names of letters, digits, '-', '_' "
            "and '.' (no '..', no empty parts)")


def test_hub_lora_downloads_are_the_owners(guests):
    """Row 7: a visitor naming a hub LoRA not in the cache is refused before any download or GPU slot; the
    owner's download is tried (offline here: one line, no server paths). ``core/loading`` is a folder of the
    server's working folder: as a hub id it is never looked up there."""
    assert _error(_generate(guests.bob, lora1_source="core/loading")) == (
        "LoRA 'core/loading' is not in this studio's hub cache, and downloading LoRAs is for the studio's owner "
        "only (the owner may allow it with --allow-visitor-downloads)")
    owner_error = _error(_generate(guests.ann, lora1_source="core/loading"))
    assert owner_error.startswith("LoRA 'core/loading' cannot be downloaded: "), owner_error
    assert str(Path(__file__).resolve().parents[2]) not in owner_error


def test_a_bare_lora_name_loads_from_the_lora_folder(guests):
    """Also seen in issue 21: the bare name the Safety section offers visitors is found in loras/ and loaded."""
    assert _error(_generate(guests.bob, lora1_source="style.safetensors", lora1_weight=0.5)) is None


def test_fair_queue_limits_visitors_not_the_owner(guests):
    """Row 4: per-session and per-address limits and a compute budget for visitors; the owner's jobs pass;
    Cancel of one's own waiting job works."""
    assert _error(_generate(guests.eve, steps=80, width=512, height=512)) == (
        "this request is 21 megapixel-steps (512x512, 80 steps, 1 image(s)): visitors of this studio may ask for "
        "at most 10 (fewer steps, images or pixels; the owner sets --visitor-budget)")
    generate = _dep(guests.ann, api_name="generate")
    # the owner's long job holds the GPU slot (and is over the visitors' budget: the owner has none)
    owner_session = "owner-long"
    assert guests.ann.join(generate, _generate_data(guests.ann, steps=100, width=256, height=256, images=4),
                           owner_session).status_code == 200
    time.sleep(1.0)
    data = _generate_data(guests.bob)
    queued = _dep(guests.bob, label="Generate")  # the click's first step (before the queue), as the page sends it
    guests.bob.call(queued, [], "bob-a")
    assert guests.bob.join(generate, data, "bob-a").status_code == 200
    second = guests.bob.join(generate, data, "bob-a")
    assert second.status_code != 200 and second.json()["detail"] == (
        "you have 1 job(s) waiting already: visitors of this studio may queue at most 1 (wait for them or Cancel "
        "one; the owner sets --visitor-jobs-per-session)")
    assert guests.bob.join(generate, data, "bob-b").status_code == 200
    third = guests.eve.join(generate, data, "eve-c")  # another login, the same address
    assert third.status_code != 200 and third.json()["detail"] == (
        "2 jobs from your address are waiting already: at most 2 per address (the owner sets "
        "--visitor-jobs-per-address)")
    assert guests.ann.join(generate, data, "owner-short").status_code == 200  # never refused for visitors' load
    cancel = _dep(guests.bob, api_name="cancel")
    guests.bob.call(cancel, [], "bob-a")  # drops bob's waiting job when its turn comes
    guests.ann.call(_dep(guests.ann, api_name="cancel"), [], owner_session)  # the long job stops at its next step
    for client, session in ((guests.ann, owner_session), (guests.bob, "bob-a"), (guests.bob, "bob-b"),
                            (guests.ann, "owner-short")):
        messages = client.messages(session)
        assert _error(messages) is None, (session, _error(messages))
        if session == "bob-a":
            assert "Cancelled before it started" in json.dumps(messages)


def test_story_renders_per_visitor(guests):
    """Row 5: a visitor's render of the owner's title goes to the visitor's own folder; the owner's is untouched."""
    render = _dep(guests.ann, api_name="render_story")
    assert _error(guests.ann.call(render, [STORY, "", True])) is None
    owner_dir = guests.outputs / "stories" / "shared"
    before = {p.name: p.read_bytes() for p in owner_dir.rglob("*") if p.is_file()}
    assert "manifest.json" in before
    messages = guests.bob.call(render, [STORY, "", True])
    assert _error(messages) is None
    assert {p.name: p.read_bytes() for p in owner_dir.rglob("*") if p.is_file()} == before
    visitor_dirs = list((guests.outputs / "stories" / "visitors").glob("*/shared"))
    assert len(visitor_dirs) == 1 and (visitor_dirs[0] / "manifest.json").is_file()
    assert str(owner_dir) not in json.dumps(messages)


def test_edit_regions_are_never_files(guests, secret):
    """Row 1: the region of "Edit this panel" is a layout name or box, never a file on the server; the same
    words for an existing and a missing file."""
    story = STORY.replace("Shared", "Regions")
    assert _error(guests.ann.call(_dep(guests.ann, api_name="render_story"), [story, "", True])) is None
    manifest_path = guests.outputs / "stories" / "regions" / "manifest.json"
    before = manifest_path.read_bytes()
    edit = _dep(guests.ann, api_name="edit_panel")
    relative = "../" * 12 + str(secret["png"]).lstrip("/")
    for region in (str(secret["png"]), str(secret["dir"] / "missing.png"), relative, "/etc/passwd"):
        error = _error(guests.ann.call(edit, [story, "", 1, 0.5, region]))
        assert error == (f"the region to redo {short_repr(region.strip())} must be one of whole, left, right, top, "
                         "bottom, left-third, center-third, right-third, grid:RxC:N or box:x0,y0,x1,y1 "
                         "(fractions 0-1)"), error
    assert manifest_path.read_bytes() == before and b"png:" not in before
    assert _error(guests.ann.call(edit, [story, "", 1, 0.5, "box:0,0,0.5,0.5"])) is None  # a box still works
    assert b"box:0,0,0.5,0.5" in manifest_path.read_bytes()
