"""The layout's rules, checked on the code itself: import contracts (pyproject.toml,
`[tool.importlinter]`), no import cycles, serving free of the load-test extra, and an
architecture document that names every folder."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
LOADTEST_ONLY = {"locust", "gevent", "matplotlib"}


def test_import_contracts_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename="pyproject.toml", no_cache=True, no_logo=True) == 0


@pytest.mark.parametrize("package", ["serving", "loadtests"])
def test_no_module_is_part_of_an_import_cycle(package: str) -> None:
    graph = grimp.build_graph(package)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _reachable(name: str, extras: frozenset[str], seen: set[tuple[str, str]]) -> set[str]:
    """Names of the distributions `name[extras]` pulls in, transitively (installed ones)."""
    try:
        requires = distribution(name).requires or []
    except PackageNotFoundError:
        return set()
    found: set[str] = set()
    for text in requires:
        req = Requirement(text)
        wanted = req.marker is None or any(
            req.marker.evaluate({"extra": extra}) for extra in (extras or {""})
        )
        if not wanted:
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if (key, ",".join(sorted(req.extras))) in seen:
            continue
        seen.add((key, ",".join(sorted(req.extras))))
        found |= {key} | _reachable(req.name, frozenset(req.extras), seen)
    return found


def test_serving_install_has_no_load_test_dependencies() -> None:
    """`pip install medserve` (no extras), as the serving image does, pulls no Locust, gevent
    or matplotlib, even transitively; `medserve[loadtest]` does."""
    assert not _reachable("medserve", frozenset(), set()) & LOADTEST_ONLY
    assert _reachable("medserve", frozenset({"loadtest"}), set()) >= LOADTEST_ONLY


def test_architecture_doc_names_every_folder() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    folders = sorted(
        str(p.parent.relative_to(ROOT)) for p in (ROOT / "serving").rglob("__init__.py")
    ) + sorted(str(p.parent.relative_to(ROOT)) for p in (ROOT / "loadtests").rglob("__init__.py"))
    missing = [f for f in folders if f"`{f}/`" not in doc]
    assert not missing, f"docs/architecture.md does not describe {missing}"
