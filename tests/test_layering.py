"""Layering is strict: a module imports only modules of a lower layer (README, "Map of the package").

Every import is followed: ``import``/``from`` statements anywhere in a module (function bodies included),
relative or absolute, and string imports (``importlib.import_module("iovalab....")``, ``__import__``, and the
command line's ``_delegate("sub.module", ...)``, which imports ``iovalab.sub.module``).
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "iovalab"

#: layer of every module (dotted name below ``iovalab``); a module may import only strictly lower layers.
#: The subpackages are bands: kernel < drivers, trace < lab < book < cli.
RANK = {
    "resources": 0,
    "kernel": 0, "kernel.event_schema": 0, "kernel.units": 0, "kernel.events": 0.2, "kernel.version": 0,
    "kernel.iova_rcache": 0.95, "kernel.iova": 1, "kernel.pgtable.table": 0.5, "kernel.pgtable.ops_walk": 0.55,
    "kernel.pgtable.ops": 0.6,
    "kernel.pgtable.intel_vtd": 0.7, "kernel.pgtable.amd_v1": 0.7, "kernel.pgtable.arm_lpae": 0.7,
    "kernel.pgtable.generic_pt": 0.72, "kernel.pgtable.vtdss": 0.75, "kernel.pgtable.amdv1_pt": 0.75,
    "kernel.pgtable.io_pgtable": 0.8, "kernel.pgtable": 0.9,
    "kernel.iommu_gather": 1.8, "kernel.iotlb": 1.9, "kernel.iommu": 2, "kernel.device": 2,
    "kernel.swiotlb_slots": 2.9, "kernel.swiotlb": 3,
    "kernel.dma_debug": 3.2, "kernel.dma_iova": 3.5, "kernel.p2pdma": 1.5,
    "kernel.dma_iommu_fq": 3.6, "kernel.dma_iommu_sg": 3.7,
    "kernel.dma_iommu": 4,
    "drivers.common": 5, "drivers.blk_mq_dma": 5.3, "drivers.nvme_pci": 5.5, "drivers.hmm": 5.5,
    "drivers.vfio_mlx5": 5.5, "drivers": 5.8,
    "trace": 5, "trace.ftrace_formats": 4.9,
    "trace.ftrace": 5, "trace.ftrace_write": 5.5, "trace.evidence": 5.55, "trace.steps": 5.6,
    "trace.system": 5.7,
    "trace.lines": 5.8, "trace.reference": 6, "trace.replay": 6, "trace.replay_cli": 6.1, "trace.bigtrace": 6.05,
    "trace.rerun": 5.9,
    "lab": 6, "lab.cost": 6.5, "lab.scenarios": 7, "lab.step_state": 6.2, "lab.explain_steps": 7.5,
    "lab.notation": 6.1, "lab.derivation": 7.8,
    "lab.explain": 8, "lab.claims": 8, "lab.review": 8, "lab.captures": 6.3,
    "lab.exercise_base": 8.2, "lab.exercise_alloc": 8.5, "lab.exercise_map": 8.5, "lab.exercise_workload": 8.5,
    "lab.exercise_misuse": 8.5,
    "lab.exercises": 9,
    "book": 9, "book.viz_base": 9.3, "book.viz_views": 9.5, "book.viz_paths": 9.5, "book.viz_replay": 9.5,
    "book.viz_captures": 9.5, "book.viz": 10,
    "book.tables": 9.5, "book.widgets": 11, "book.quizwidget": 11,
    "cli.bench_browser": 11.5, "cli.bench": 12, "cli.handout": 12, "cli.fuzz": 12, "cli": 13,
    "": 14, "__main__": 15,
}


def modules():
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).with_suffix("")
        if rel.parts[0] == "data":   # package data (a capture's own scripts), not a module of the package
            continue
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), p


def _resolve(module_name: str, is_package: bool, level: int, target: str | None) -> str:
    base = ["iovalab"] + (module_name.split(".") if module_name else [])
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imported(name: str, path: Path):
    """``(dotted target below iovalab, line)`` for every import of the package in ``path``."""
    tree = ast.parse(path.read_text())
    pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            full = _resolve(name, pkg, node.level, node.module) if node.level else (node.module or "")
            if full == "iovalab" or full.startswith("iovalab."):
                # "from iovalab.x import y": y may be a submodule
                targets += [f"{full}.{a.name}" for a in node.names] + [full]
        elif isinstance(node, ast.Import):
            targets += [a.name for a in node.names if a.name.startswith("iovalab")]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            s = node.args[0].value
            if fn in ("import_module", "__import__") and s.startswith("iovalab"):
                targets.append(s)
            elif fn == "_delegate":
                targets.append(f"iovalab.{s}")
            elif fn == "files" and s.startswith("iovalab."):
                targets.append(s)
        for t in targets:
            yield t, node.lineno


def known(target: str) -> str | None:
    """The RANK key of a dotted import target (``iovalab.kernel.iova.IovaDomain`` -> ``kernel.iova``)."""
    parts = target.split(".")[1:]
    while parts:
        key = ".".join(parts)
        if key in RANK:
            return key
        parts.pop()
    return "" if target == "iovalab" else None


@pytest.mark.parametrize("name, path", list(modules()), ids=lambda x: str(x) if isinstance(x, str) else x.name)
def test_imports_point_down(name, path):
    assert name in RANK, f"{path.relative_to(PKG)}: new module, give it a layer in tests/test_layering.py"
    for target, line in imported(name, path):
        key = known(target)
        assert key is not None, f"{path.relative_to(PKG)}:{line} imports unknown module {target}"
        if key == name or (key and name.startswith(key + ".") and key in ("kernel", "trace", "lab", "book", "drivers")):
            continue   # a package's own docstring module, never code
        assert RANK[key] < RANK[name], (
            f"{path.relative_to(PKG)}:{line} imports {target} (layer {RANK[key]}) from layer {RANK[name]}")


def test_the_checker_sees_string_and_nested_imports(tmp_path):
    """The walker itself: a string import and an import inside a function are both found."""
    src = tmp_path / "m.py"
    src.write_text("import importlib\n\ndef f():\n    from iovalab.book import viz\n"
                   "    return importlib.import_module('iovalab.lab.claims')\n")
    found = {t for t, _ in imported("kernel.iova", src)}
    assert "iovalab.book.viz" in found and "iovalab.lab.claims" in found
    assert RANK[known("iovalab.lab.claims")] > RANK["kernel.iova"]


def test_model_layers_do_not_touch_drawing():
    for name, path in modules():
        if name.startswith(("kernel", "drivers", "trace")) or name == "resources":
            text = path.read_text()
            assert "matplotlib" not in text and "ipywidgets" not in text, path.name


def test_no_module_touches_another_objects_private_state():
    """``obj._x`` only on ``self``/``cls``: other objects are used through their public methods."""
    bad = []
    for _name, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    bad.append(f"{path.relative_to(PKG)}:{node.lineno} {ast.unparse(node)}")
    assert bad == []
