"""The layering rule of ../shared/STYLE.md: a module imports only from its own layer or the
ones below it, imports inside functions included, and no module takes part in an import
circle. Read with ast, so an import hidden in a function body counts too."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = [
    ("paths", "registry", "world"),
    ("losses", "rl", "data", "config"),
    ("models",),
    ("rewards",),
    ("eval",),
    ("trainers",),
    ("train",),
    ("pipeline",),
    ("evaluate", "cli", "experiments"),
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
ROOT = REPO / "prefopt"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["prefopt", *parts])


def _imports(path: Path, mod: str | None = None) -> set[str]:
    mod = mod or _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("prefopt.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("prefopt."):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts}
    graph = {}
    for mod, path in files.items():
        if mod == "prefopt":  # the package root (the public API) is exempt
            continue
        raw = _imports(path)
        # `from pkg import sub` where sub is a module names the module, not the package
        subs = {t for t in raw if t in files and t.rsplit(".", 1)[0] in raw}
        graph[mod] = {
            t
            for t in raw
            if t in files
            and t not in (mod, "prefopt")
            and not any(sub.startswith(t + ".") for sub in subs)
        }
    return graph


def _layer(mod: str) -> int:
    return LAYER[mod.split(".")[1]]


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in _graph()} - set(LAYER))
    assert not missing, f"modules missing from the layer table of STYLE.md: {missing}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [
        f"{mod} (layer {_layer(mod)}) imports {target} (layer {_layer(target)})"
        for mod, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(mod)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for target in sorted(graph.get(mod, ())):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not circles, circles


def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path):
    # the test itself must be able to fail: an import in a function body is found
    source = "def f():\n    from prefopt.train import train\n    return train\n"
    path = tmp_path / "_probe.py"
    path.write_text(source)
    assert "prefopt.train" in _imports(path, "prefopt.models._probe")
    assert _layer("prefopt.models._probe") < _layer("prefopt.train")
