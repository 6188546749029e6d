"""Every docstring example in changedet runs as a doctest (so ``make test`` keeps them true).

Collection mirrors ``pytest --doctest-modules`` for the package: each module found by ``pkgutil.walk_packages`` is
one test, run with NORMALIZE_WHITESPACE | ELLIPSIS. Examples that need real data or a GPU are marked ``+SKIP`` in
the docstring itself. A module whose optional dependency is missing is skipped with the reason.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import warnings

import pytest

import changedet

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
# optional extras: a module that cannot be imported without them is skipped, not failed
OPTIONAL = {"dask", "distributed", "folium", "xarray", "rioxarray", "nbclient", "mapclassify"}


def _module_names() -> list[str]:
    names = ["changedet"]
    for info in pkgutil.walk_packages(changedet.__path__, prefix="changedet."):
        if info.name.split(".")[-1] == "__main__":
            continue
        names.append(info.name)
    return sorted(names)


MODULES = _module_names()


def _has_examples(name: str) -> bool:
    """Whether a module has docstring examples (a module that cannot be imported is kept: the test says why)."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return True
    finder = doctest.DocTestFinder(exclude_empty=True)
    return any(t.examples for t in finder.find(module, name, module=module))


WITH_EXAMPLES = [n for n in MODULES if _has_examples(n)]


def test_collection_finds_the_package_modules() -> None:
    # the walk must see the subpackages, or the doctests below silently cover nothing
    for expected in ("changedet.api", "changedet.vectorize", "changedet.io.alignment", "changedet.models.registry",
                     "changedet.plotting", "changedet.cli.main"):
        assert expected in MODULES


def test_most_public_modules_have_examples() -> None:
    for expected in ("changedet.api", "changedet.tiling", "changedet.vectorize", "changedet.models.registry"):
        assert expected in WITH_EXAMPLES
    assert len(WITH_EXAMPLES) >= 20


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name: str, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        missing = (getattr(exc, "name", None) or "").split(".")[0]
        if missing in OPTIONAL:
            pytest.skip(f"{name} needs the optional dependency {missing!r}")
        raise
    monkeypatch.chdir(tmp_path)  # an example that writes relative paths writes into the test's folder
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(module, name, module=module) if t.examples]
    assert tests, f"{name} was collected for its examples but has none"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # examples show results; warnings are tested elsewhere
        for test in sorted(tests, key=lambda t: t.name):
            runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{name}: {results.failed} of {results.attempted} examples failed\n" + "".join(report)
    assert os.getcwd() == str(tmp_path)
