"""The layout shows the architecture: core/ in subpackages, no import cycles, no UI in the engine, a light top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_no_import_cycles_in_core():
    modules = _modules("core")
    graph = {name: {m for m in _imports(path, name, top_level_only=True) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_core_imports_no_ui():
    for name, path in _modules("core").items():
        ui = {m for m in _imports(path, name, top_level_only=False) if m.split(".")[0] in ("gradio", "app")}
        assert not ui, f"{name} imports {sorted(ui)}: core/ is the engine, the UI lives in app/"


def test_core_is_split_into_subpackages():
    flat = sorted(p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__init__")
    assert flat == ["engine", "errors", "limits", "pipeline", "request"], flat
    for package in ("models", "conditioning", "loading", "io", "story", "evaluation"):
        assert (ROOT / "core" / package / "__init__.py").is_file()


def test_public_api_and_a_light_import():
    code = ("import sys, core; heavy = [m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules]; "
            "print(','.join(heavy)); from core import Engine, GenerationRequest, Character, InstantCharacterPipeline; "
            "from core.pipeline import InstantCharacterPipeline as P; assert P is InstantCharacterPipeline")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == "", f"import core loads {result.stdout.split()[0]}"
