"""The package's dependency direction (invcal/ARCHITECTURE.md), checked on the source: no
import cycle between invcal's modules, and no import of a domain package from the core.

Every import counts, at module level or inside a function (a function-level import is a
dependency all the same; it only hides a cycle from the interpreter)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "invcal"

#: The domains; everything else in invcal except the application layer is the core.
DOMAINS = ("invcal.sparse", "invcal.imaging", "invcal.ode", "invcal.sklearn")
#: The application layer: the package facade, the command line and its report; they may
#: import every domain.
APPLICATION = ("invcal", "invcal.__main__", "invcal.cli", "invcal.catalog", "invcal.report")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    """The invcal modules ``name`` imports (a ``from pkg import sub`` of a submodule counts
    as importing the submodule; of a name, as importing pkg)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("invcal"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("invcal"))
    return {m for m in found if m in modules and m != name}


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _in(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _is_core(name: str) -> bool:
    return not _in(name, DOMAINS) and name not in APPLICATION


def test_the_graph_is_read():
    graph = _graph()
    # a check that finds nothing because it reads nothing would pass: make sure it reads
    assert len(graph) > 40
    assert "invcal.hypergradient" in graph["invcal.outer.driver"]
    assert "invcal.sparse.problem" in graph["invcal.sparse.working_set"]


def test_no_import_cycle():
    graph = _graph()
    # the facade (invcal/__init__) is imported by every `import invcal.x`; a module
    # importing the facade back is a cycle like any other
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    # a package's __init__ importing its own submodules is not a cycle unless a submodule
    # imports the package back (which the walk above would report)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_core_imports_no_domain():
    graph = _graph()
    bad = sorted(
        f"{m} -> {d}" for m, deps in graph.items() if _is_core(m) for d in deps if _in(d, DOMAINS)
    )
    assert not bad, "core modules importing a domain: " + ", ".join(bad)


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_domain_imports_no_other_domain(domain):
    graph = _graph()
    others = [d for d in DOMAINS if d != domain and not d.startswith(domain)]
    allowed = {"invcal.sklearn": ("invcal.sparse",)}.get(domain, ())
    bad = sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        if _in(m, (domain,))
        for d in deps
        if _in(d, others) and not _in(d, allowed)
    )
    assert not bad, f"{domain} imports another domain: " + ", ".join(bad)


def test_no_module_over_800_lines():
    long = {
        str(p.relative_to(ROOT.parent)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 800
    }
    assert not long, f"split these modules by concern: {long}"
