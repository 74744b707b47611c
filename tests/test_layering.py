"""Layering is strict: a module imports only modules of a lower layer (DESIGN.md, imports point down)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "iovalab"

#: layer of every module; a module may import only modules of a strictly lower layer
RANK = {
    "events": 0, "units": 0,
    "iova": 1, "pgtable": 1, "ftrace": 1, "ftrace_write": 1.5,
    "iommu": 2, "device": 2,
    "swiotlb": 3,
    "dma_iova": 3.5,
    "dma": 4,
    "cost": 5,
    "scenarios": 6,
    "traces": 7, "replay": 7, "explain_steps": 7,
    "explain": 8, "claims": 8,
    "exercises": 9, "viz_views": 9, "viz_replay": 9,
    "viz": 10,
    "widgets": 11, "quizwidget": 11,
    "bench": 12, "handout": 12,
    "__main__": 13, "__init__": 13,
}


def modules():
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG)
        name = "scenarios" if rel.parts[0] == "scenarios" else rel.stem
        yield name, p


def imported(path: Path, in_subpackage: bool):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            up = node.level - (1 if in_subpackage else 0)
            if up == 0:  # inside iovalab/scenarios/
                continue
            if node.module:
                yield node.module.split(".")[0], node.lineno
            else:
                for a in node.names:
                    if a.name != "__version__":
                        yield a.name, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("iovalab."):
                    yield a.name.split(".")[1], node.lineno


@pytest.mark.parametrize("name, path", list(modules()), ids=lambda x: str(x) if isinstance(x, str) else x.name)
def test_imports_point_down(name, path):
    assert name in RANK, f"{path.name}: new module, give it a layer in tests/test_layering.py"
    sub = path.parent.name == "scenarios"
    for target, line in imported(path, sub):
        assert target in RANK, f"{path.name}:{line} imports unknown module {target}"
        assert RANK[target] < RANK[name], (
            f"{path.relative_to(PKG)}:{line} imports {target} (layer {RANK[target]}) from layer {RANK[name]}")


def test_model_layers_do_not_touch_drawing():
    for name, path in modules():
        if RANK[name] <= RANK["dma"]:
            text = path.read_text()
            assert "matplotlib" not in text and "ipywidgets" not in text, path.name
