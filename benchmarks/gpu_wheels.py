"""The wheels the GPU check carries to a machine with no package index, and whether they fit what travels.

    python -m benchmarks.gpu_wheels fetch              # download exactly WHEELS into .whl/ (each once), then check
    python -m benchmarks.gpu_wheels check [FOLDER]     # the wheel set + the working tree within 64 MiB?
    python -m benchmarks.gpu_wheels stand-in FOLDER    # a tiny wheel there (the CPU rehearsal's install)

The GPU machines have torch 2.11, transformers 5.17, accelerate 1.15 and peft for Python 3.12 (manylinux x86_64),
but none of the packages below; these have no other needs that are missing there (their ``Requires-Dist``:
numpy, safetensors, huggingface-hub, requests, pyyaml, tqdm, ninja, packaging, all present). What travels with a
device call is the working tree (tracked and untracked-not-ignored files) plus the carried paths, 64 MiB in all.

Standard library only: it runs before the carried packages are installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

MiB = 2**20
TRAVEL_LIMIT_BYTES = 64 * MiB
ROOT = Path(__file__).resolve().parents[1]
WHEEL_DIR = ROOT / ".whl"
# (requirement, file name, bytes, sha256) as downloaded for cp312 manylinux x86_64 on 2026-12-07
WHEELS = (
    ("diffusers==0.42.1", "diffusers-0.42.1-py3-none-any.whl", 6355908,
     "9154faa704ce00e0b77f568e0d64786064368528aab5fc14eeea92f87d788014"),
    ("torchao==0.18.0", "torchao-0.18.0-cp310-abi3-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl", 3372585,
     "6540b148e40ba81cbd4de86392225a076a1591146e9cebb099b3b234ba9feebe"),
    ("optimum-quanto==0.2.7", "optimum_quanto-0.2.7-py3-none-any.whl", 165285,
     "1369b1d9a4a197f88c0d1c67e8d950694e5b86ce4c9f3878e178d5be35339f61"),
    ("gguf==0.19.0", "gguf-0.19.0-py3-none-any.whl", 118475,
     "70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd"),
    ("platformdirs==4.14.9", "platformdirs-4.14.9-py3-none-any.whl", 94272,
     "d0d3a23e7ff282cfa94b77f5a22b81030dcb68ba0430f90c74f4bd8d090782ea"),
    ("bitsandbytes==0.50.2", "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", 43139553,
     "55348a9a4a21bfd99cf8c7b32fe67b4030ae5c2a05738e03c1747f65fa6ec283"),
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
STAND_IN = "gpu_check_stand_in"


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the files that travel with a device call: tracked and untracked-not-ignored (git's view); where
    there is no git checkout (the device machine's copy), every file but ``.git`` and ``.whl``."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                   and not {".git", ".whl"} & set(p.relative_to(root).parts))
    total = 0
    for name in listed:
        path = root / os.fsdecode(name)
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_set_bytes() -> int:
    return sum(size for _, _, size, _ in WHEELS)


def check(folder: Path | None = None, root: Path = ROOT) -> tuple[bool, list[str]]:
    """(fits, lines): the wheel set (from ``folder``'s files when given, else the recorded sizes) plus the tree."""
    lines, ok = [], True
    wheels = 0
    for requirement, name, size, _ in WHEELS:
        path = folder / name if folder else None
        if path is not None and path.is_file():
            size = path.stat().st_size
            lines.append(f"  {name}  {size / MiB:.2f} MiB")
        elif folder is not None:
            ok = False
            lines.append(f"  {name}  MISSING ({requirement}: python -m benchmarks.gpu_wheels fetch)")
        else:
            lines.append(f"  {name}  {size / MiB:.2f} MiB (recorded size)")
        wheels += size
    tree = tree_bytes(root)
    total = wheels + tree
    fits = total <= TRAVEL_LIMIT_BYTES
    ok = ok and fits
    lines.append(f"wheels {wheels / MiB:.2f} MiB + working tree {tree / MiB:.2f} MiB = {total / MiB:.2f} MiB "
                 f"of {TRAVEL_LIMIT_BYTES / MiB:.0f} MiB: {'fits' if fits else 'TOO LARGE'}")
    return ok, lines


def fetch(folder: Path = WHEEL_DIR) -> list[Path]:
    """Downloads each wheel of WHEELS not already in ``folder`` (checked by size and sha256): one pip call each."""
    folder.mkdir(parents=True, exist_ok=True)
    got = []
    for requirement, name, size, sha in WHEELS:
        path = folder / name
        if not (path.is_file() and path.stat().st_size == size and _sha256(path) == sha):
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--python-version", "3.12", "--implementation", "cp", "-d", str(folder), requirement]
            for platform in PLATFORMS:
                command += ["--platform", platform]
            subprocess.run(command, check=True)
            if not path.is_file() or _sha256(path) != sha:
                raise SystemExit(f"error: {requirement} did not download as {name} with the recorded sha256")
        got.append(path)
    extra = sorted(p.name for p in folder.glob("*.whl") if p not in got)
    if extra:  # two versions of one package stop the whole install on the device
        raise SystemExit(f"error: {folder} holds wheels outside the set: {', '.join(extra)}")
    return got


def write_stand_in(folder: Path) -> Path:
    """A tiny valid wheel (package ``gpu_check_stand_in``) in ``folder``: the rehearsal's install on the CPU runs the
    same pip command as the device's, without carrying 53 MB of wheels."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{STAND_IN}-1.0-py3-none-any.whl"
    dist = f"{STAND_IN}-1.0.dist-info"
    files = {f"{STAND_IN}/__init__.py": "INSTALLED_BY = 'benchmarks/gpu_check.sh'\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {STAND_IN}\nVersion: 1.0\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: benchmarks.gpu_wheels\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    records = [f"{name},," for name in files] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = "\n".join(records) + "\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_wheels", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the wheel set into .whl/, then check it fits")
    c = sub.add_parser("check", help="does the wheel set fit with the tree in 64 MiB?")
    c.add_argument("folder", nargs="?", type=Path, default=None,
                   help="the wheels' folder (default: the recorded sizes, no files needed)")
    s = sub.add_parser("stand-in", help="write the rehearsal's tiny wheel into FOLDER")
    s.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "stand-in":
        print(write_stand_in(args.folder))
        return 0
    folder = args.folder if args.command == "check" else None
    if args.command == "fetch":
        fetch()
        folder = WHEEL_DIR
    ok, lines = check(folder)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
