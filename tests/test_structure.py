"""The shape of the source tree: small functions and no private names borrowed across modules."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fairal"
MAX_LINES = 60


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), filename=str(path))) for path in sorted(SRC.rglob("*.py"))]


def _where(path: Path) -> str:
    return str(path.relative_to(SRC.parent))


def test_no_function_is_longer_than_sixty_lines():
    """A function counts from its `def` line (decorators excluded) to the last line of its body, docstring included."""
    long = [
        f"{_where(path)}:{node.name}:{node.end_lineno - node.lineno + 1}"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not long, f"functions longer than {MAX_LINES} lines (file:name:lines):\n" + "\n".join(long)


def _private_imports(tree: ast.Module, package: str) -> list[str]:
    """`from fairal.x import _y` and `from .x import _y`: names a module keeps to itself, taken by another."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source != "fairal" and not source.startswith("fairal."):
            continue
        found += [f"{source}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
    return found


def test_no_module_imports_a_private_name_of_another():
    leaks = []
    for path, tree in _modules():
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        package = ".".join(parts if path.name == "__init__.py" else parts[:-1])
        leaks += [f"{_where(path)}: {name}" for name in _private_imports(tree, package)]
    assert not leaks, "private names imported from another fairal module:\n" + "\n".join(leaks)


def test_the_checks_see_what_they_should():
    """The two checks find a long function and a private import in a made-up module."""
    body = "\n".join(f"    x = {i}" for i in range(MAX_LINES))
    tree = ast.parse(f"from fairal.run.train import _step\nfrom ..run.train import _other\ndef f():\n{body}\n")
    (func,) = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert func.end_lineno - func.lineno + 1 == MAX_LINES + 1
    assert _private_imports(tree, "fairal.report") == ["fairal.run.train._step", "fairal.run.train._other"]
