"""The package's layering, read from the source (no import): each subpackage's ``__init__``
docstring declares what it may import ("May import: ...") and who never imports it ("Never
imported by: ..."); every import in every module, lazy imports inside functions included, must
follow those lines, the module graph has no cycle, only ``models/`` names TransformerLens, and
the tree stays small (few top-level modules, none over 400 lines).

The checker runs on the real tree and on small trees written here that break one rule each,
so each rule is shown to fail when broken.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "anchor_flow"
#: Modules at the top that every layer may import (they import nothing of anchor_flow).
BASE = {"errors", "_version"}
MAX_LINES = 400
MAX_TOP_MODULES = 6


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every ``anchor_flow`` module or name imported anywhere in the file (line, dotted name)."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # "from a.b import c": c is a module of a.b or a name in it; either resolves below.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _declared(init: Path) -> tuple[set[str], set[str]] | None:
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    may = re.search(r"^May import: (.*?)(?: \(.*\))?\.?$", doc, re.M)
    never = re.search(r"^Never imported by: (.*?)\.?$", doc, re.M)
    if may is None and never is None:
        return None

    def names(match: re.Match[str] | None) -> set[str]:
        text = match.group(1) if match else ""
        parts = {n.strip() for n in text.split(",")}
        return {n for n in parts if n and n != "nothing" and " " not in n}

    return names(may), names(never)


def _has_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def violations(root: Path) -> list[str]:
    """Every broken layout rule of the package at ``root``, one line each."""
    problems: list[str] = []
    top = root.name
    packages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").exists())
    rules: dict[str, tuple[set[str], set[str]]] = {}
    for name in packages:
        declared = _declared(root / name / "__init__.py")
        if declared is None:
            problems.append(f"{name}/__init__.py: no 'May import:' / 'Never imported by:' lines")
            continue
        may, never = declared
        unknown = (may | never) - set(packages)
        if unknown:
            problems.append(f"{name}/__init__.py names unknown packages {sorted(unknown)}")
        rules[name] = (may, never)
    for name, (_may, never) in rules.items():
        expected = {p for p, (may, _) in rules.items() if p != name and name not in may}
        if never != expected:
            problems.append(
                f"{name}/__init__.py: 'Never imported by' says {sorted(never)}, but the "
                f"packages that may not import it are {sorted(expected)}"
            )
    if cycle := _has_cycle({p: may for p, (may, _) in rules.items()}):
        problems.append(f"declared package layers form a cycle: {' -> '.join(cycle)}")

    modules = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        parts = module.split(".")
        own = parts[1] if len(parts) > 1 else None
        for line, name in _imports(path, root):
            head = name.split(".")[0]
            if head == "transformer_lens" and own != "models":
                problems.append(f"{path.name}:{line} imports {name}: only models/ names TL")
            if head != top:
                continue
            target = name
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module and target in modules:
                graph[module].add(target)
            layer = target.split(".")[1] if "." in target else None
            if module == top or layer in BASE or layer == own:
                continue
            if layer is None:
                problems.append(f"{module}:{line} imports the package root ({name})")
            elif own in BASE or own is None:
                problems.append(f"{module}:{line} imports {name}; base modules import nothing")
            elif own in rules and layer not in rules[own][0]:
                problems.append(
                    f"{module}:{line} imports {name}: {own} may import only "
                    f"{sorted(rules[own][0]) or 'nothing'}"
                )
    if cycle := _has_cycle(graph):
        problems.append(f"import cycle: {' -> '.join(cycle)}")
    top_modules = sorted(p.stem for p in root.glob("*.py"))
    if len(top_modules) > MAX_TOP_MODULES:
        problems.append(f"{len(top_modules)} modules at the top: {top_modules}")
    for module, path in modules.items():
        if (n := len(path.read_text().splitlines())) > MAX_LINES:
            problems.append(f"{module} has {n} lines (at most {MAX_LINES})")
    return problems


def test_the_package_follows_its_declared_layers() -> None:
    assert violations(SRC) == []


def test_every_subpackage_declares_its_layer() -> None:
    inits = [p / "__init__.py" for p in SRC.iterdir() if (p / "__init__.py").exists()]
    declared = {init.parent.name for init in inits if _declared(init)}
    expected = {"models", "results", "icl", "testbeds", "analysis", "applications", "report"}
    assert declared == expected | {"run", "cli"}


# --- the checker fails where it should -----------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "anchor_flow"
    base = {
        "__init__.py": "from anchor_flow.high.b import B\n",
        "errors.py": "",
        "low/__init__.py": '"""Low.\n\nMay import: nothing.\nNever imported by: .\n"""\n',
        "low/a.py": "A = 1\n",
        "high/__init__.py": '"""High.\n\nMay import: low.\nNever imported by: low.\n"""\n',
        "high/b.py": "from anchor_flow.low.a import A\nB = A\n",
    }
    for name, text in {**base, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_clean_small_tree_passes(tmp_path: Path) -> None:
    assert violations(_tree(tmp_path, {})) == []


@pytest.mark.parametrize(
    ("files", "message"),
    [
        # a lower layer importing a higher one, at module level and lazily in a function
        ({"low/a.py": "from anchor_flow.high.b import B\n"}, "low may import only nothing"),
        ({"low/a.py": "def f():\n    from anchor_flow.high import b\n"}, "low may import only"),
        ({"low/a.py": "def f():\n    import anchor_flow.high.b\n"}, "low may import only"),
        # TransformerLens named outside models/
        ({"high/b.py": "from transformer_lens import HookedTransformer\n"}, "only models/"),
        # the package root imported from inside (the old lazy __version__ import)
        ({"high/b.py": "def f():\n    from anchor_flow import B\n"}, "imports the package root"),
        # a cycle inside one package, through a lazy import
        (
            {
                "high/b.py": "from anchor_flow.high.c import C\n",
                "high/c.py": "def f():\n    from anchor_flow.high.b import B\nC = 1\n",
            },
            "import cycle",
        ),
        # a docstring whose 'Never imported by' line disagrees with the others' 'May import'
        (
            {"low/__init__.py": '"""Low.\n\nMay import: nothing.\nNever imported by: high.\n"""\n'},
            "'Never imported by' says",
        ),
        ({"high/__init__.py": '"""High, undeclared."""\n'}, "no 'May import:'"),
        ({"low/a.py": "x = 1\n" * (MAX_LINES + 1)}, "lines (at most"),
        ({f"m{i}.py": "" for i in range(MAX_TOP_MODULES)}, "modules at the top"),
    ],
)
def test_each_broken_rule_is_reported(tmp_path: Path, files: dict[str, str], message: str) -> None:
    problems = violations(_tree(tmp_path, files))
    assert any(message in p for p in problems), problems
