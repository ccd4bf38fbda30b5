"""The layout rules: imports run cluster -> actors -> pipeline, and pipeline never imports ray."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"pipeline": {"ray", "actors", "cluster"}, "actors": {"cluster"}}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    offenders = {str(p.relative_to(REPO)): sorted(imported_roots(p) & FORBIDDEN[package])
                 for p in (REPO / package).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_top_level_layout_is_present():
    for name in ("pipeline", "actors", "cluster", "tests", "setup.cfg", "ray_cluster.yaml"):
        assert (REPO / name).exists(), name
