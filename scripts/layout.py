"""The shape of fairal's source tree, measured from its imports and definitions (nothing of it is run).

    python scripts/layout.py [SRC]     # SRC: a checkout's src/fairal (default: this one's)

prints the modules, the floors of the import graph (the longest chain of imports from a module down to one that
imports no other), its circles (groups of modules that import each other, directly or round about), the imports of
fairal inside functions, and the longest functions. tests/test_layout.py holds the rules over these measures."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fairal"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted(src.rglob("*.py"))}


def _resolve(name: str, known: dict) -> str:
    """The module an imported name is: ``fairal.run`` + ``loop`` is the module ``fairal.run.loop``."""
    return name if name in known else name.rsplit(".", 1)[0]


def imports(src: Path = SRC) -> list[tuple[str, str, int, bool]]:
    """Every import of fairal: (importing module, imported module, line, inside a function)."""
    known = modules(src)
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                  for n in ast.walk(f)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fairal"):
                targets = [_resolve(f"{node.module}.{a.name}", known) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("fairal")]
            found += [(name, t, node.lineno, id(node) in inside) for t in dict.fromkeys(targets) if t != name]
    return found


def graph(found: list) -> dict[str, set]:
    edges: dict = {}
    for a, b, _, _ in found:
        edges.setdefault(a, set()).add(b)
    return edges


def cycle(edges: dict[str, set]) -> list[str]:
    """One circle of the graph ``edges`` ([] when it has none)."""
    state: dict = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node, [node])):
            return found
    return []


def circles(edges: dict[str, set]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def floors(edges: dict[str, set]) -> int:
    """The number of floors: the longest chain of imports (a circle counts as one module)."""
    group = {m: i for i, c in enumerate(circles(edges)) for m in c}
    node = {m: group.get(m, m) for m in {*edges, *(b for bs in edges.values() for b in bs)}}
    down = {}
    for a, bs in edges.items():
        down.setdefault(node[a], set()).update(node[b] for b in bs if node[b] != node[a])
    memo: dict = {}

    def height(v):
        if v not in memo:
            memo[v] = 1 + max((height(w) for w in down.get(v, ())), default=0)
        return memo[v]

    return max((height(v) for v in set(node.values())), default=0)


def longest_functions(src: Path = SRC, n: int = 5) -> list[tuple[int, str]]:
    found = []
    for name, path in modules(src).items():
        for f in ast.walk(ast.parse(path.read_text())):
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((f.end_lineno - f.lineno + 1, f"{name}.{f.name}"))
    return sorted(found, reverse=True)[:n]


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else SRC
    found = imports(src)
    edges = graph(found)
    inside = [f for f in found if f[3]]
    print(f"{len(modules(src))} modules, {floors(edges)} floors, {len(found)} imports of fairal between modules, "
          f"{len(inside)} of them inside functions ({len({a for a, *_ in inside})} modules)")
    for c in circles(edges):
        print("circle:", " <-> ".join(c))
    print("longest functions:", ", ".join(f"{name} ({lines})" for lines, name in longest_functions(src)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
