"""The layout a newcomer reads: no file imports a file that imports it, directly or through
others, counting every import statement, a function's included."""
import ast

from conftest import ROOT


def import_graph() -> dict[str, set[str]]:
    """{module: the project's modules it imports} for the top-level files and experiments/."""
    files = sorted(ROOT.glob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))
    own = {p.stem for p in ROOT.glob("*.py")}
    graph = {}
    for path in files:
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        name = str(path.relative_to(ROOT).with_suffix(""))
        graph[name] = {m for m in found if m in own and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan 1972): each holds an import cycle."""
    index, low, stack, groups = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert {"data", "media", "melspec", "metrics", "mmunet"} <= graph.keys()
    assert cycles(graph) == []
