"""The package's layering, checked statically (``ast``; nothing is imported or executed).

Layers, bottom to top (docs/architecture.md)::

    weighting, objectives      the math: no Lightning, no model or data code
    data                       sources, schemas, tokenisation, collators, LightningDataModules
                               (from models only the tokenizer loaders of models.loading)
    models                     loading, tiny models, log-probs, rollouts, LoRA, scorers
    modules                    LightningModules, ReferencePolicy, reward-spec loading
    callbacks, evals, annotate, pipelines, cli

Two checks: (1) no file imports a package its layer must not know (the project's own copy of
the rules of the layering tool used in review, plus the data/models seam), and (2) the import
graph of the package's modules has no cycle. Imports inside functions count too, so a cycle
cannot be hidden behind a function-local import; the one exception is a package
``__init__``'s PEP 562 ``__getattr__`` (a lazy re-export runs on attribute access, never while
the package is being imported). Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``
first, so those are edges as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lightning_robust"
#: source folder (relative to the repository root) -> the package it installs as
FOLDERS = {
    "lightning_robust": "lightning_robust",
    "callbacks": "lightning_robust.callbacks",
    "evals": "lightning_robust.evals",
}
MATH_BANNED = (
    "lightning",
    "pytorch_lightning",
    "lightning_robust.modules",
    "lightning_robust.data",
    "lightning_robust.models",
    "lightning_robust.callbacks",
    "lightning_robust.evals",
    "lightning_robust.annotate",
    "lightning_robust.pipelines",
    "lightning_robust.cli",
)
ABOVE_MODULES = (
    "lightning_robust.callbacks",
    "lightning_robust.evals",
    "lightning_robust.annotate",
    "lightning_robust.pipelines",
    "lightning_robust.cli",
)
#: package prefix -> (prefixes it must not import, exceptions allowed inside those prefixes)
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "lightning_robust.weighting": (MATH_BANNED, ()),
    "lightning_robust.objectives": (MATH_BANNED, ()),
    # data sits below models: only the tokenizer loaders (models.loading) may be used
    "lightning_robust.data": (
        ("lightning_robust.models", "lightning_robust.modules", *ABOVE_MODULES),
        ("lightning_robust.models.loading",),
    ),
    "lightning_robust.models": (
        ("lightning", "pytorch_lightning", "lightning_robust.modules", *ABOVE_MODULES),
        (),
    ),
    "lightning_robust.modules": (ABOVE_MODULES, ()),
    # evals run without Lightning, modules or callbacks
    "lightning_robust.evals": (
        (
            "lightning",
            "pytorch_lightning",
            "lightning_robust.modules",
            "lightning_robust.callbacks",
            "callbacks",
        ),
        (),
    ),
}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def discover(root: Path) -> dict[str, Path]:
    """``{module name: file}`` of every module of the package (``callbacks``/``evals`` mapped)."""
    modules = {}
    for folder, package in FOLDERS.items():
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            parts = path.relative_to(base).with_suffix("").parts
            if folder == PACKAGE and parts[0] in ("callbacks", "evals"):
                continue
            name = ".".join([package, *parts])
            modules[name.removesuffix(".__init__")] = path
    return modules


def _lazy_getattr_nodes(tree: ast.Module, is_package: bool) -> set[int]:
    if not is_package:
        return set()
    return {
        id(node)
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__"
        for node in ast.walk(fn)
    }


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, imported name)`` of every import in the file (``from a import b`` gives ``a.b``
    and ``a``), relative imports resolved, lazy package ``__getattr__`` imports left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    lazy = _lazy_getattr_nodes(tree, is_package)
    out = []
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return out


def crossings(modules: dict[str, Path]) -> list[str]:
    found = []
    for module, path in modules.items():
        for prefix, (banned, allowed) in RULES.items():
            if not _under(module, prefix):
                continue
            for line, name in imports(path, module):
                if any(_under(name, b) for b in banned) and not any(
                    _under(name, a) for a in allowed
                ):
                    if not _under(name, prefix):  # a package may import itself
                        found.append(f"{path}:{line}: {module} imports {name}")
    return sorted(set(found))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges module -> module of the package (each target plus the packages run before it)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for _, name in imports(path, module):
            target = resolve(name)
            while target is not None and target != module and not _under(module, target):
                graph[module].add(target)
                target = resolve(target.rpartition(".")[0])
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_upward_imports():
    modules = discover(ROOT)
    assert "lightning_robust.modules.reference" in modules and "lightning_robust.evals" in modules
    assert crossings(modules) == []


def test_no_import_cycles():
    assert cycles(import_graph(discover(ROOT))) == []


@pytest.fixture
def toy_tree(tmp_path):
    """A miniature package with one upward import and one cycle hidden in a function."""
    files = {
        "lightning_robust/__init__.py": "",
        "lightning_robust/data/__init__.py": "def __getattr__(name):\n    from lightning_robust.data import dm\n",
        "lightning_robust/data/dm.py": "from lightning_robust.models.loading import load\n",
        "lightning_robust/data/coll.py": "from ..modules import thing\n",
        "lightning_robust/models/__init__.py": "",
        "lightning_robust/models/loading.py": "from lightning_robust.models.tiny import W\n",
        "lightning_robust/models/tiny.py": "def f():\n    from lightning_robust.models import loading\n",
        "lightning_robust/modules/__init__.py": "",
        "lightning_robust/weighting/__init__.py": "import lightning\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return discover(tmp_path)


def test_the_checks_catch_what_they_are_for(toy_tree):
    found = crossings(toy_tree)
    assert any("lightning_robust.data.coll imports lightning_robust.modules" in f for f in found)
    assert any("lightning_robust.weighting imports lightning" in f for f in found)
    assert not any("data.dm" in f for f in found)  # the tokenizer seam is allowed
    # tiny -> loading inside a function still closes the cycle; the lazy __getattr__ does not
    assert cycles(import_graph(toy_tree)) == [
        ["lightning_robust.models.loading", "lightning_robust.models.tiny"]
    ]
