"""The layers of localserve, read from its source: no two of its packages import each other, and
the tool wrappers import no stage.

A "package" here is a top-level subpackage (chat/, llamacpp/, ...) or a root module (errors.py,
textdata.py, ...). Imports are read with ast, those inside functions included: a lazy import is
still a dependency, and a cycle through one is still a cycle.

And one rule of the tests, read from their source: every call that asks a model to generate bounds the
tokens it may generate, so no test waits on a model to stop by itself.
"""

from __future__ import annotations

import ast
import importlib
import inspect
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


# --- every generation in the tests is bounded -------------------------------------------------------------

TESTS = Path(__file__).resolve().parent
# The routes on which a server generates: Ollama's and the OpenAI-compatible ones.
GENERATING_ROUTES = ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions")
BOUNDS = ("num_predict", "max_tokens")
HTTP_CALLS = {"post", "stream", "request", "Request"}  # httpx's, the stand-in's client's, urllib's
CLIENT_CALLS = {"chat", "generate",  # the ollama client
                "ChatOllama",  # LangChain
                "create_completion", "create_chat_completion"}  # llama-cpp-python
# (the openai client's chat.completions.create and completions.create: any `create` after `completions`)

# localserve's own generating functions bound every request by themselves (a max_tokens default, checked
# below), so a test may call them without a bound of its own. The tests' own helpers (a function or a method
# of tests/) are scanned where they ask the model, not where they are called.
BOUNDED_BY_LOCALSERVE = (("localserve.ollama.verification", "verify"), ("localserve.llamacpp.smoke", "smoke_test"),
                         ("localserve.llamacpp.smoke", "chat"), ("localserve.llamacpp.lora", "answer"),
                         ("localserve.lifecycle.targets", "open_target"), ("localserve.lifecycle.evaluate", "evaluate"),
                         ("localserve.lifecycle.promotion", "promote"), ("localserve.gpuquant.quality", "folder_chat"),
                         ("localserve.llamacpp.bench", "measure"), ("localserve.plan.bench", "BenchSpec"))


def _defaults(args: ast.arguments) -> list[tuple[str, ast.AST]]:
    """(parameter, default) of each parameter that has one."""
    positional = list(zip((args.posonlyargs + args.args)[::-1], args.defaults[::-1]))
    return [(a.arg, d) for a, d in positional + list(zip(args.kwonlyargs, args.kw_defaults)) if d is not None]


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


class _Scope:
    """What a name may hold in one file: every value assigned to it (module level, or in a function around
    the line that uses it, loop targets and parameter defaults included), or, for a name imported from a
    helper module of tests/, what that module assigns to it."""

    def __init__(self, path: Path, root: Path):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        self.tree, self.root, self.functions, self.module = tree, root, [], {}
        self.imported: dict[str, tuple[str, str]] = {}
        self.defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.methods = {m.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for m in c.body
                        if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                values: dict[str, list[ast.AST]] = {}
                for name, default in _defaults(node.args):
                    values.setdefault(name, []).append(default)
                for inner in ast.walk(node):
                    self._collect(inner, values)
                self.functions.append((node.lineno, node.end_lineno, values))
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (node.module, alias.name)
        todo = list(tree.body)
        while todo:  # module level: everything outside the functions
            node = todo.pop()
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                self._collect(node, self.module)
                todo += ast.iter_child_nodes(node)

    @staticmethod
    def _collect(node: ast.AST, into: dict[str, list[ast.AST]]) -> None:
        pairs = []
        if isinstance(node, ast.Assign):
            pairs = [(t, node.value) for t in node.targets]
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            pairs = [(node.target, node.value)]
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            pairs = [(node.target, node.iter)]
        for target, value in pairs:
            for name in ast.walk(target):
                if isinstance(name, ast.Name):
                    into.setdefault(name.id, []).append(value)

    def helper(self, name: str) -> "tuple[_Scope, str] | None":
        """(the helper module of tests/ that `name` is imported from, its name there)."""
        module, original = self.imported.get(name, ("", ""))
        path = self.root / (module.replace(".", "/") + ".py")
        return (_Scope(path, self.root), original) if module and path.is_file() else None

    def values(self, name: str, line: int) -> list[ast.AST]:
        found = [v for start, end, values in self.functions if start <= line <= end for v in values.get(name, [])]
        found += self.module.get(name, [])
        helper = None if found else self.helper(name)
        return helper[0].module.get(helper[1], []) if helper else found

    def calls_no_client(self, name: str, method: bool) -> bool:
        """Whether `name` called here is one of localserve's bounded functions or a helper of tests/: a method
        of a class of this file, a function of this file or one imported from a helper module of tests/."""
        if method:
            return name in self.methods
        if self.imported.get(name) in BOUNDED_BY_LOCALSERVE or name in self.defined:
            return True
        helper = self.helper(name)
        return helper is not None and helper[1] in helper[0].defined

    def reach(self, nodes) -> list[ast.AST]:
        """Every node under `nodes`, following each name to what it may hold."""
        seen, out, todo = set(), [], list(nodes)
        while todo:
            for inner in ast.walk(todo.pop()):
                out.append(inner)
                if isinstance(inner, ast.Name) and (inner.id, inner.lineno) not in seen:
                    seen.add((inner.id, inner.lineno))
                    todo += self.values(inner.id, inner.lineno)
        return out

    def may_be_none(self, value: ast.AST) -> bool:
        """A bound of None is none: a None constant, or a name that holds nothing else."""
        if isinstance(value, ast.Name):
            held = self.values(value.id, value.lineno)
            return bool(held) and all(_is_none(v) for v in held)
        return _is_none(value)


def _callee(call: ast.Call) -> tuple[str, list[str]]:
    """(the called name, the names before it, innermost first): client.chat.completions.create ->
    ("create", ["completions", "chat", "client"])."""
    chain, func = [], call.func
    while isinstance(func, ast.Attribute):
        chain.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        chain.append(func.id)
    return (chain[0] if chain else ""), chain[1:]


def unbounded_generations(root: Path) -> list[str]:
    """file:line of each call in the .py files under `root` that asks a model to generate and does not bound
    the tokens it may generate: an HTTP call to a generating route, a call of the ollama, openai, LangChain or
    llama.cpp client. Bounded means num_predict or max_tokens (not None) in the call or in what its arguments
    hold: a dict, a name assigned one, a helper module's constant, a parameter's default."""
    found = []
    for path in sorted(root.rglob("*.py")):
        scope = _Scope(path, root)
        calls = [n for n in ast.walk(scope.tree) if isinstance(n, ast.Call)]
        for call in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
            name, before = _callee(call)
            if name in HTTP_CALLS:
                strings = [n.value for n in scope.reach(call.args)  # the URL: a literal, an f-string, a name
                           if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                routes = [r for r in GENERATING_ROUTES if any(r in s for s in strings)]
                if not routes:
                    continue
                what = f"{name}({' or '.join(routes)})"
            elif name in CLIENT_CALLS or (name == "create" and "completions" in before):
                if scope.calls_no_client(name, method=bool(before)):
                    continue
                what = ".".join([*reversed(before), name])
            else:
                continue
            reached = scope.reach([*call.args, *call.keywords])
            keywords = [n.value for n in reached if isinstance(n, ast.keyword) and n.arg in BOUNDS]
            keys = [v for n in reached if isinstance(n, ast.Dict) for k, v in zip(n.keys, n.values)
                    if isinstance(k, ast.Constant) and k.value in BOUNDS]
            if all(scope.may_be_none(v) for v in keywords + keys):
                found.append(f"{path.relative_to(root.parent)}:{call.lineno} {what} has no {' or '.join(BOUNDS)}")
    return found


def test_no_test_waits_on_a_model_to_stop_by_itself():
    # a model that does not stop, or a machine shared with other builds, turns an unbounded answer into a
    # timeout: a red CI run (issue 24)
    found = unbounded_generations(TESTS)
    assert not found, "bound it (num_predict in Ollama's options, max_tokens for OpenAI):\n" + "\n".join(found)
    for module, function in BOUNDED_BY_LOCALSERVE:
        default = inspect.signature(getattr(importlib.import_module(module), function)).parameters["max_tokens"].default
        assert isinstance(default, int) and default > 0, f"{module}.{function} generates with max_tokens={default!r}"


def test_the_scan_finds_an_unbounded_chat_and_follows_a_bound_into_a_helper(tmp_path):
    (tmp_path / "helpers.py").write_text(
        'SHORT = {"num_predict": 6}\n'
        "def chat(url, question, max_tokens=40):\n"
        '    return httpx.post(url + "/v1/chat/completions", json={"messages": [], "max_tokens": max_tokens})\n'
        "def generate(url, prompt, tokens=None):\n"
        '    return httpx.post(url + "/api/generate", json={"prompt": prompt, "options": {"num_predict": tokens}})\n')
    (tmp_path / "test_x.py").write_text(
        "from helpers import SHORT, chat, generate\n"
        "def test_free(url, client, traffic):\n"
        '    HTTP.post(url + "/api/chat", json={"model": "m", "stream": False, "messages": []})\n'
        '    client.chat(model="m", messages=[], options=SHORT)\n'
        '    client.chat(model="m", messages=[])\n'
        '    chat(url, "q"), generate(url, "p"), traffic.generate("logged, not asked")\n'
        "def ask(url, tokens=None):\n"
        '    body = {"model": "m", "max_tokens": tokens}\n'
        '    return httpx.post(f"{url}/v1/chat/completions", json=body)\n'
        "def short(url, tokens=8):\n"
        '    for body in ({"options": {"num_predict": tokens}},):\n'
        '        httpx.post(url + "/api/generate", json=body)\n'
        '    httpx.post(url + "/api/tags", json={})\n'
        '    OpenAI().chat.completions.create(model="m", messages=[])\n'
        "class Traffic:\n"
        "    def generate(self, text): ...\n")
    assert unbounded_generations(tmp_path) == [
        f"{tmp_path.name}/helpers.py:5 post(/api/generate) has no num_predict or max_tokens",
        f"{tmp_path.name}/test_x.py:3 post(/api/chat) has no num_predict or max_tokens",
        f"{tmp_path.name}/test_x.py:5 client.chat has no num_predict or max_tokens",
        f"{tmp_path.name}/test_x.py:9 post(/v1/chat/completions) has no num_predict or max_tokens",
        f"{tmp_path.name}/test_x.py:14 chat.completions.create has no num_predict or max_tokens"]
