"""The layering the README promises: every project import points at its own layer or one below,
and a method package never imports another method."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own layer and the layers before it.
LAYERS = [
    ["prompts"],
    ["cluster"],
    ["pipelines.core"],
    ["actors"],
    ["training"],
    ["pipelines.stages"],
    ["pipelines.exports"],
    ["pipelines.eval"],
    ["pipelines.report"],
    ["pipelines.ragsynth", "pipelines.querygen", "pipelines.prismrag", "pipelines.scarlet", "pipelines.source2synth"],  # the methods
    ["pipelines.registry"],
    ["pipelines.cli"],
]
METHODS = set(LAYERS[-3])


def _owner(module: str) -> str | None:
    """The layer entry a dotted module name belongs to (the longest matching prefix)."""
    best = None
    for layer in LAYERS:
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
                best = prefix
    return best


def _level(prefix: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if prefix in layer)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] in ("__init__", "__main__"):
        parts = parts[:-1]
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (type-only imports are no dependency)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]  # from pipelines import x
    return out


def _project_files() -> list[Path]:
    return sorted(p for top in ("prompts", "cluster", "actors", "training", "pipelines")
                  for p in (REPO / top).rglob("*.py"))


def test_every_project_module_belongs_to_a_layer():
    unowned = [str(p.relative_to(REPO)) for p in _project_files()
               if _module_name(p) != "pipelines" and _owner(_module_name(p)) is None]
    assert not unowned, f"add these modules to a layer in tests/test_layout.py and the README: {unowned}"


def test_no_module_imports_a_layer_above_it():
    upward = []
    for path in _project_files():
        me = _owner(_module_name(path))
        if me is None:
            continue
        for line, imported in _imports(path):
            other = _owner(imported)
            if other is None or other == me:
                continue
            if _level(other) > _level(me) or (me in METHODS and other in METHODS):
                upward.append(f"{path.relative_to(REPO)}:{line} ({me}) imports {imported} ({other})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The check itself: a stage importing a method is reported."""
    assert _owner("pipelines.stages.index") == "pipelines.stages"
    assert _owner("pipelines.ragsynth.multihop") == "pipelines.ragsynth"
    assert _level("pipelines.ragsynth") > _level("pipelines.stages")
    src = tmp_path / "x.py"
    src.write_text("from pipelines.ragsynth import multihop as mh\nimport training.losses\n"
                   "if TYPE_CHECKING:\n    from pipelines.registry import RunConfig\n")
    assert [m for _, m in _imports(src)] == ["pipelines.ragsynth", "pipelines.ragsynth.multihop", "training.losses"]


def test_every_method_has_a_fidelity_section_with_section_numbers():
    from pipelines.registry import METHODS

    text = (REPO / "docs" / "FIDELITY.md").read_text()
    sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M))
    titles = {"ragsynth": "RAGSynth", "querygen": "Query distillation (Tamber et al.)", "scarlet": "SCARLet",
              "prismrag": "PrismRAG", "source2synth": "Source2Synth"}
    for name in METHODS:
        body = sections[titles[name]]
        rows = [r for r in body.splitlines() if r.startswith("|") and not r.startswith("|---")][1:]
        assert len(rows) >= 5, name
        assert sum(bool(re.search(r"§|\b\d+\.\d|App\.", r)) for r in rows) >= len(rows) // 2, name
