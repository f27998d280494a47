"""The one path policy: inside the roots or refused, with links and ``..`` followed; output files never replace
a folder, a device or a link."""

from __future__ import annotations

import os
import stat

import pytest

from core.io.path_policy import UNRESTRICTED, PathNotAllowedError, PathPolicy
from core.io.paths import OutputPathError, atomic_path, output_target, write_bytes_atomic


@pytest.fixture
def tree(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "ok.txt").write_text("ok")
    (root / "escape").symlink_to(outside / "secret.txt")  # a link inside the root pointing out of it
    (root / "sub" / "up").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_inside_the_roots(tree):
    root, _ = tree
    policy = PathPolicy([root])
    assert policy.resolve("ok.txt", base=root) == (root / "ok.txt").resolve()
    assert policy.resolve(root / "sub" / ".." / "ok.txt") == (root / "ok.txt").resolve()
    assert policy.resolve("new/file.png", base=root) == (root / "new" / "file.png").resolve()  # may not exist yet
    assert policy.resolve("~/.bashrc", base=root) == (root / "~" / ".bashrc").resolve()  # no ~ for clients


@pytest.mark.parametrize("name", ["../outside/secret.txt", "escape", "sub/up/secret.txt", "/etc/passwd",
                                  "/proc/self/environ", "sub/../../outside/missing.txt"])
def test_outside_the_roots_refused_alike(tree, name):
    root, _ = tree
    with pytest.raises(PathNotAllowedError, match="outside the folders this studio may use") as info:
        PathPolicy([root], labels={str(root.resolve()): "the output folder"}).resolve(name, base=root, what="image")
    assert "the output folder" in str(info.value) and "secret" not in str(info.value).replace(name, "")


def test_odd_paths(tree):
    root, _ = tree
    with pytest.raises(PathNotAllowedError, match="not a valid path"):
        PathPolicy([root]).resolve("ok.txt\x00.png", base=root)
    loop = root / "loop"
    loop.symlink_to(loop)
    with pytest.raises(PathNotAllowedError):
        PathPolicy([root]).resolve("loop/x", base=root)


def test_unrestricted_for_the_command_line(tree):
    _, outside = tree
    assert UNRESTRICTED.resolve(outside / "secret.txt") == (outside / "secret.txt").resolve()
    assert not UNRESTRICTED.restricted and PathPolicy([]).restricted


def test_output_target_refuses_folders_and_devices(tmp_path):
    with pytest.raises(OutputPathError, match="is a folder: give a file name inside it"):
        output_target(tmp_path)
    with pytest.raises(OutputPathError, match="not a regular file"):
        output_target("/dev/null")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="not a regular file"):
        write_bytes_atomic(fifo, b"x")
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_links_are_written_through(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    write_bytes_atomic(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    folder_link = tmp_path / "dir-link"
    folder_link.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(OutputPathError, match="is a folder"):
        with atomic_path(folder_link):
            pass
    assert folder_link.is_symlink()
