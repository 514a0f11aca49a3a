"""The ``>>>`` examples of docs/quickstart.md run and print what the page says."""
import doctest
from pathlib import Path

import pytest

import nytorch

QUICKSTART = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"


def test_quickstart_examples():
    if not hasattr(nytorch, "NytoModule"):
        pytest.skip("nytorch.NytoModule does not exist yet; docs/quickstart.md is written for it")
    result = doctest.testfile(str(QUICKSTART), module_relative=False, globs={},
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, "no examples found in docs/quickstart.md"
    assert result.failed == 0, f"{result.failed} of {result.attempted} quickstart examples failed (see above)"
