"""House rules as tests: `vora_core` (all logic) never imports Prefect or `flows` (orchestration), and the
mechanism packages never import the layers above them (the stages, or eval from data)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (function-level imports included);
    `from a import b` counts as `a` and `a.b`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def offenders(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    """`file: module` for each import under `folder` of a module in (or under) `forbidden`."""
    return sorted(f"{path.relative_to(folder.parent)}: {module}" for path in folder.rglob("*.py")
                  for module in imported(path) if any(module == f or module.startswith(f + ".") for f in forbidden))


def test_vora_core_never_imports_prefect_or_flows():
    assert offenders(ROOT / "vora_core", ("prefect", "flows")) == []


def test_data_never_imports_the_layers_above_it():
    above = ("vora_core.eval", "vora_core.stages", "vora_core.train", "vora_core.caption", "vora_core.ablation")
    assert offenders(ROOT / "vora_core" / "data", above) == []


def test_mechanisms_never_import_the_stages():
    for package in ("data", "caption", "model", "train", "eval"):
        assert offenders(ROOT / "vora_core" / package, ("vora_core.stages",)) == []


def test_the_rule_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("import prefect.tasks\n")
    (pkg / "b.py").write_text("def f():\n    from flows import common\n")
    (pkg / "c.py").write_text("from vora_core import stages\nimport prefectish\n")
    assert offenders(pkg, ("prefect", "flows")) == ["pkg/a.py: prefect.tasks", "pkg/b.py: flows",
                                                     "pkg/b.py: flows.common"]
    assert offenders(pkg, ("vora_core.stages",)) == ["pkg/c.py: vora_core.stages"]
