"""The layers are folders and imports only point down: core <- engine <- views <- ui <- cli; tools is
reached only from the CLI. Checked from every module's imports (top-level and inside functions), so
a shortcut across the layers cannot come back quietly."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prefixlab"
# What each layer may import from prefixlab (besides itself). The package root is only its lazy
# public API, which nothing inside the package needs.
ALLOWED = {
    "core": set(),
    "engine": {"core"},
    "views": {"core", "engine"},
    "ui": {"core", "engine", "views"},
    "cli": {"core", "engine", "views", "tools"},
    "tools": {"core", "engine", "views", "ui", "cli"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE).parts
    return relative[0] if len(relative) > 1 else Path(relative[0]).stem


def _imported_layers(path: Path, source: str | None = None) -> set[tuple[str, int]]:
    """(layer, line) of every prefixlab module the module at `path` imports, absolute or relative
    (`source`: its text, when not the file's)."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    package_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] if node.module or node.level == 0 else [f"{module}.{a.name}" for a in node.names]
            if module == "prefixlab":  # `from prefixlab import x`: x is a layer or a public name
                names = [f"prefixlab.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "prefixlab" and len(parts) > 1:
                layer = parts[1]
                found.add((layer if (PACKAGE / layer).is_dir() or (PACKAGE / f"{layer}.py").exists() else "__init__",
                           node.lineno))
    return found


def test_imports_only_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        for imported, line in _imported_layers(path):
            if imported != layer and imported not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({layer}) imports prefixlab.{imported}")
    assert not wrong, "\n".join(wrong)


def test_the_check_itself_sees_a_wrong_import():
    """The scanner must find function-level, relative and package-root imports, or the test above
    proves nothing."""
    probe = PACKAGE / "core" / "probe.py"  # a module that would live in core/ (never written)
    source = ("from .config import TaskType\n"
              "def f():\n    from ..engine import zoo\n    import prefixlab.views.tables\n"
              "    from prefixlab import ui, get_peft_model\n")
    layers = {layer for layer, _ in _imported_layers(probe, source)}
    assert layers == {"core", "engine", "views", "ui", "__init__"}
