"""Every example in a docstring of fairal's modules runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import fairal


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(fairal.__path__, "fairal."):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as handle:
                if ">>> " in handle.read():
                    names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_examples_are_found():
    # the three modules known to hold examples: a walk that finds none would make the test below vacuous
    assert {"fairal.stats", "fairal.owndata.api", "fairal.simulate.dataset"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} print something else"
