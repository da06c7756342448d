"""The package's shape: imports run one way, and functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "camwidget"
ENGINE = {"errors", "images", "render", "labels", "layers", "methods", "capture", "explainer"}
#: The package's tiers, bottom first: a module imports only from its own tier or below.
TIERS = (
    {"errors", "inputs", "layouts", "memory", "cache", "worker", "images", "labels", "targets"}
    | {"framing", "sharing", "folding", "placement"},
    {"samples", "outputs", "render", "capture", "pixel", "deeplift", "lrp", "layers", "scoring"}
    | {"fullgrad", "legrad", "zero_shot", "proof", "scored"},
    {"method_context", "cams", "methods", "perturbation", "attributions", "components"}
    | {"metrics"}
    | {"explanation", "options", "smoothing"}
    | {"preparation", "passes", "kept"},
    {"requests", "batch"},
    {"explainer"},
    {"audit", "audit_ray", "audit_store", "sanity", "zoo", "zoo.efficientnet_lite"} | {"sources"},
    {"widget", "widget.*", "cli"},  # the command serves the app's settings
    {""},  # the package's front door
)
MAX_LINES = {"function": 50, "class": 400, "module": 500}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports() -> dict[str, set[str]]:
    """module -> the camwidget modules it imports (relative imports, at any depth)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package[: len(package) - node.level + 1] + (node.module or "").split(".")
            target = ".".join(part for part in base if part)
            for alias in node.names:  # `from . import x` imports the module x
                child = f"{target}.{alias.name}".strip(".")
                found.add(child if is_module(child) else target)
        graph[name] = found - {name}
    return graph


def test_no_import_cycle():
    graph, done, path = imports(), set(), []

    def visit(node):
        if node in path:
            raise AssertionError(f"import cycle: {' -> '.join([*path[path.index(node) :], node])}")
        if node in done:
            return
        path.append(node)
        for other in graph.get(node, ()):
            visit(other)
        path.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_the_engine_never_imports_the_panel():
    graph = imports()
    for module in ENGINE:
        assert not any(m.startswith("widget") for m in graph[module]), module
    for module in ("widget.controls", "widget.views", "widget.inspector"):
        assert "widget.panel" not in graph[module]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_function_over_50_lines(path):
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > 50
    ]
    assert not long, f"{path.name}: {', '.join(long)}"


def tier(module: str) -> int:
    for index, members in enumerate(TIERS):
        if module in members or any(
            m.endswith(".*") and module.startswith(m[:-1]) for m in members
        ):
            return index
    raise AssertionError(f"camwidget.{module} is in no tier: place it in TIERS")


def test_no_module_imports_one_above_it():
    above = [
        f"{module} (tier {tier(module)}) imports {other} (tier {tier(other)})"
        for module, others in imports().items()
        for other in others
        if tier(other) > tier(module)
    ]
    assert not above, "; ".join(above)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_class_or_module_over_its_size(path):
    text = path.read_text()
    large = [
        f"class {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_LINES["class"]
    ]
    lines = len(text.splitlines())
    if lines > MAX_LINES["module"]:
        large.append(f"the module ({lines} lines)")
    assert not large, f"{path.name}: {', '.join(large)}"


def test_the_size_checks_can_fail(tmp_path):
    """The checks above read what they are meant to: a long class and module are seen."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES["class"] + 1))
    tree = ast.parse(f"class Big:\n{body}\n")
    (node,) = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    assert node.end_lineno - node.lineno + 1 > MAX_LINES["class"]
    with pytest.raises(AssertionError, match="in no tier"):
        tier("nowhere")
