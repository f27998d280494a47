"""The layout shows the architecture: no import circles (every import counted), core/ in subpackages with no UI in
the engine and a light top, every error class on core.errors' bases, and a README layout that matches the tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "app", "trainer", "benchmarks")


def _modules(*packages: str) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Every import statement under ``node``, at any depth (inside functions too), but not under
    ``if TYPE_CHECKING:`` (its ``else`` branch counts)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for branch in child.orelse:
                yield from _import_nodes_of(branch)
            continue
        yield from _import_nodes_of(child)


def _import_nodes_of(node: ast.AST):
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _import_nodes(node)


def _imports(path: Path, name: str, modules) -> set[str]:
    """The modules ``name`` (at ``path``) imports: ``from pkg import mod`` counts as ``pkg.mod`` when that is a
    module, else as ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules(*PACKAGES)
    return {name: {m for m in _imports(path, name, modules) if m in modules and m != name}
            for name, path in modules.items()}


def _cyclic_groups(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for name in sorted(graph):
        if name not in index:
            visit(name)
    return groups


def _cycle_path(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest import path from the group's first module back to itself, within the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    return paths[node] + [start]
                if nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{group} is not a cycle")


def test_no_import_cycles():
    """Counted over every import, function-level ones included (a lazy import that breaks a circle still hides
    one); only ``if TYPE_CHECKING:`` imports are left out."""
    graph = _import_graph()
    groups = _cyclic_groups(graph)
    assert not groups, f"{len(groups)} import cycle(s): " + "; ".join(
        " -> ".join(_cycle_path(graph, group)) for group in groups)


def test_the_cycle_check_sees_function_level_imports(tmp_path):
    code = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import core.b\n"
            "def f():\n    from core import b\n    from . import c\n")
    (tmp_path / "a.py").write_text(code)
    modules = {"core.a": tmp_path / "a.py", "core.b": None, "core.c": None}
    assert _imports(tmp_path / "a.py", "core.a", modules) == {"typing", "core.b", "core.c"}
    graph = {"core.a": {"core.b"}, "core.b": {"core.c"}, "core.c": {"core.a"}, "core.d": {"core.a"}}
    assert _cyclic_groups(graph) == [["core.a", "core.b", "core.c"]]
    assert _cycle_path(graph, ["core.a", "core.b", "core.c"]) == ["core.a", "core.b", "core.c", "core.a"]


def test_core_imports_no_ui():
    modules = _modules("core")
    for name, path in modules.items():
        ui = {m for m in _imports(path, name, modules) if m.split(".")[0] in ("gradio", "app")}
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


def test_every_error_class_in_core_derives_from_a_core_errors_base():
    """A UI tells a user's mistake from a bug by ``core.errors.UserError``: each ``...Error`` class in core/ derives
    directly from a class of ``core.errors`` (so no module is imported only for the base it defines)."""
    bases = {node.name for node in ast.walk(ast.parse((ROOT / "core" / "errors.py").read_text()))
             if isinstance(node, ast.ClassDef)}
    wrong = []
    for name, path in _modules("core").items():
        if name == "core.errors":
            continue
        tree = ast.parse(path.read_text())
        from_errors = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                       and node.module == "core.errors" for alias in node.names if alias.name in bases}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                if not {ast.unparse(b) for b in node.bases} & from_errors:
                    wrong.append(f"{name}.{node.name}({', '.join(ast.unparse(b) for b in node.bases)})")
    assert not wrong, f"error classes not on a core.errors base: {wrong}"


# ---------------------------------------------------------------------- the README's layout section
_ENTRY = re.compile(r"^( *)([\w.-]+/|[\w.-]+\.py)(?:\s|$)")
_MENTION = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.py)\b")
_NAME_COLUMN = 20  # entries start before this column; longer indents continue the entry above


def _readme_layout() -> tuple[set[Path], set[Path]]:
    """The paths the README's "Project layout" block names: ``(entries, mentions)``. An entry is a line starting
    (indented by its depth) with ``dir/`` or ``file.py``; a ``name.py`` in an entry's text is a module of the
    entry's folder (a ``sub/name.py`` one of its subfolder, a ``core/...py`` one of the tree)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Project layout\n", 1)[1]
    block = section.split("```", 2)[1]
    entries, mentions = set(), set()
    parents: list[tuple[int, Path]] = []  # (indent, folder) of the open folders
    folder = Path()
    for line in block.splitlines()[1:]:
        match = _ENTRY.match(line)
        if match and len(match.group(1)) < _NAME_COLUMN:
            indent, name = len(match.group(1)), match.group(2)
            while parents and parents[-1][0] >= indent:
                parents.pop()
            parent = parents[-1][1] if parents else Path()
            if name.endswith("/"):
                folder = parent / name.rstrip("/")
                parents.append((indent, folder))
                entries.add(folder)
            else:
                folder = parent
                entries.add(parent / name)
            line = line[match.end():]
        for mention in _MENTION.findall(line):
            top = mention.split("/")[0]
            mentions.add(Path(mention) if top in PACKAGES else folder / mention)
    return entries, mentions


def test_the_readme_layout_matches_the_tree():
    entries, mentions = _readme_layout()
    missing = sorted(str(p) for p in entries | mentions if not (ROOT / p).exists())
    assert not missing, f"README.md's project layout names what is not in the tree: {missing}"
    unnamed = sorted(str(p.relative_to(ROOT)) for package in ("core", "app", "trainer")
                     for p in (ROOT / package).rglob("*.py")
                     if not p.name.startswith("__") and p.relative_to(ROOT) not in entries | mentions)
    assert not unnamed, f"README.md's project layout does not name these modules: {unnamed}"
