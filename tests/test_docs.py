"""The ``>>>`` examples of docs/quickstart.md and of the docstrings run and
print what they say."""

import doctest
from pathlib import Path

import nytorch
import nytorch.ops
import nytorch.particle
import pytest
import torch

QUICKSTART = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_quickstart_examples():
    result = doctest.testfile(str(QUICKSTART), module_relative=False, globs={}, optionflags=FLAGS)
    assert result.attempted > 0, "no examples found in docs/quickstart.md"
    assert result.failed == 0, f"{result.failed} of {result.attempted} quickstart examples failed (see above)"


class NytoLinear(nytorch.NytoModule):
    def __init__(self, w, b):
        super().__init__()
        self.weight = torch.nn.Parameter(w)
        self.bias = torch.nn.Parameter(b)


@pytest.mark.parametrize("module", [nytorch.particle, nytorch.ops], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    # method docstrings use a particle called `net`
    net = NytoLinear(torch.tensor([2.0]), torch.tensor([1.0]))
    result = doctest.testmod(module, extraglobs={"net": net, "torch": torch}, optionflags=FLAGS)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed"
