"""The layers of localserve, read from its source: no two of its packages import each other, and
the tool wrappers import no stage.

A "package" here is a top-level subpackage (chat/, llamacpp/, ...) or a root module (errors.py,
textdata.py, ...). Imports are read with ast, those inside functions included: a lazy import is
still a dependency, and a cycle through one is still a cycle.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "localserve"

# Tool and protocol wrappers: they run llama.cpp, llm-compressor, Ollama, vLLM, and sit below every stage.
TOOL_WRAPPERS = ("llamacpp", "gpuquant", "ollama", "vllm")
STAGES = ("chat", "quality", "plan", "merging", "modelfile", "exports", "router")
# Ollama's protocol wrapper reads and writes Modelfiles, so the Modelfile grammar sits below it.
WRAPPER_MAY_IMPORT = {("ollama", "modelfile")}

# The top: the command line imports everything, the export runners every stage; nothing imports them.
TOP = ("cli", "exports")


def import_graph(source: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports (module level or inside functions)."""
    paths = {}
    for path in source.rglob("*.py"):
        parts = path.relative_to(source.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        in_package = path.name == "__init__.py"
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    here = module.split(".") if in_package else module.split(".")[:-1]
                    origin = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                # `from pkg import name` imports pkg, and the submodule pkg.name when there is one
                names = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                while name and name not in paths:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    imported.add(name)
        graph[module] = imported
    return graph


def package_of(module: str) -> str:
    """localserve.chat.setup -> chat; localserve.errors -> errors; localserve -> localserve."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_edges(graph: dict[str, set[str]], allowed=frozenset()) -> dict[tuple[str, str], list[str]]:
    """(package, package it imports) -> the module imports that make the edge; `allowed` holds
    (module, package) edges to leave out."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            a, b = package_of(module), package_of(target)
            if a != b and (module, b) not in allowed:
                edges.setdefault((a, b), []).append(f"{module} imports {target}")
    return edges


def package_cycles(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """One shortest cycle per package that lies on one, each hop with a module import that makes it."""
    after: dict[str, set[str]] = {}
    for a, b in edges:
        after.setdefault(a, set()).add(b)
    found: list[str] = []
    seen: set[frozenset[str]] = set()
    for start in sorted(after):
        came_from = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if start in after.get(node, ()):
                path = [start]
                while node is not None:
                    path.append(node)
                    node = came_from[node]
                path.reverse()  # start, ..., start
                if frozenset(path) not in seen:
                    seen.add(frozenset(path))
                    hops = [f"{a} -> {b} ({edges[a, b][0]})" for a, b in zip(path, path[1:])]
                    found.append(" -> ".join(path) + ":\n    " + "\n    ".join(hops))
                break
            for nxt in sorted(after.get(node, ())):
                if nxt not in came_from:
                    came_from[nxt] = node
                    queue.append(nxt)
    return found


def wrapper_imports_of_stages(graph: dict[str, set[str]], allowed=frozenset()) -> list[str]:
    wrong = []
    for (a, b), why in package_edges(graph, allowed).items():
        if a in TOOL_WRAPPERS and b in STAGES and (a, b) not in WRAPPER_MAY_IMPORT:
            wrong += why
    return wrong


def test_no_two_packages_import_each_other():
    cycles = package_cycles(package_edges(import_graph(SOURCE)))
    assert not cycles, "import cycles between packages of localserve:\n" + "\n".join(cycles)


def test_tool_wrappers_import_no_stage():
    wrong = wrapper_imports_of_stages(import_graph(SOURCE))
    assert not wrong, f"{', '.join(TOOL_WRAPPERS)} sit below {', '.join(STAGES)}:\n" + "\n".join(wrong)


def test_only_the_command_line_imports_the_export_runners_and_nothing_imports_the_command_line():
    wrong = [why for (a, b), why in package_edges(import_graph(SOURCE)).items()
             if b in TOP and (a, b) not in {("cli", "exports"), ("__main__", "cli")}]
    assert not wrong, "\n".join(line for lines in wrong for line in lines)


def test_the_layers_named_here_are_the_packages_of_the_tree():
    packages = {package_of(m) for m in import_graph(SOURCE)}
    assert set(TOOL_WRAPPERS + STAGES) <= packages, set(TOOL_WRAPPERS + STAGES) - packages


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "localserve"
    for folder, files in {"quality": {"__init__.py": "from .measure import measure\n",
                                      "measure.py": "from ..llamacpp import evaluate\n\ndef measure(): ...\n"},
                          "llamacpp": {"__init__.py": "", "evaluate.py": "",
                                       "imatrix.py": "def compute():\n    from ..quality.measure import measure\n"}
                          }.items():
        (pkg / folder).mkdir(parents=True)
        for name, text in files.items():
            (pkg / folder / name).write_text(text)
    (pkg / "__init__.py").write_text("")
    graph = import_graph(pkg)
    assert graph["localserve.llamacpp.imatrix"] == {"localserve.quality.measure"}
    cycles = package_cycles(package_edges(graph))
    assert cycles == ["llamacpp -> quality -> llamacpp:\n"
                      "    llamacpp -> quality (localserve.llamacpp.imatrix imports localserve.quality.measure)\n"
                      "    quality -> llamacpp (localserve.quality.measure imports localserve.llamacpp)"]
    assert wrapper_imports_of_stages(graph) == ["localserve.llamacpp.imatrix imports localserve.quality.measure"]
    assert not package_cycles(package_edges(graph, {("localserve.llamacpp.imatrix", "quality")}))

