"""``nytorch.flat_storage`` / ``nytorch.structure_signature``: the public way
to a particle's flat buffers (docs/api.md)."""

import doctest

import nytorch as nyto
import nytorch.storage
import pytest
import torch
from nytorch._storage import state_of


class Net(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)
        self.dbl = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))


def test_flats_are_the_particle_storage():
    net = Net()
    st = nyto.flat_storage(net)
    assert isinstance(st, nyto.FlatStorage)
    # the root's own parameter first (named_parameters() order): float64, then Linear + BatchNorm
    assert [(str(d), dt, n) for d, dt, n in st.groups] == [("cpu", torch.float64, 4), ("cpu", torch.float32, 12)]
    assert [f.shape for f in st.flats] == [(4,), (12,)]
    assert all(f.is_contiguous() and f.dim() == 1 for f in st.flats)
    # the parameters are views of the flats: writes go both ways
    with torch.no_grad():
        st.flats[1].fill_(2.0)
        net.dbl.mul_(3.0)
    assert torch.equal(net.lin.weight, torch.full((2, 3), 2.0))
    assert torch.equal(st.flats[0], torch.full((4,), 3.0, dtype=torch.float64))
    assert st.flats[1].data_ptr() == net.lin.weight.data_ptr()
    # buffers: the module's own tensors, in named_buffers() order
    assert [b.data_ptr() for b in st.buffers] == [b.data_ptr() for b in net.buffers()]
    # the same tensors as the private state (no copy)
    assert [f.data_ptr() for f in st.flats] == [f.data_ptr() for f in state_of(net).flats]


def test_a_changed_structure_is_captured_again():
    net = Net()
    before = nyto.flat_storage(net)
    net.extra = torch.nn.Parameter(torch.zeros(5))
    after = nyto.flat_storage(net)
    assert after.groups[1][2] == before.groups[1][2] + 5
    f = after.flats[1]
    assert f.data_ptr() <= net.extra.data_ptr() < f.data_ptr() + f.numel() * f.element_size()


def test_results_of_particle_ops():
    net = Net()
    out = net * 2 + 1  # a lazy result: its flats are made on demand
    st = nyto.flat_storage(out)
    assert torch.equal(st.flats[0], nyto.flat_storage(net).flats[0] * 2 + 1)


def test_structure_signature():
    a, b = Net(), Net()
    assert nyto.structure_signature(a) == nyto.structure_signature(b)
    assert nyto.structure_signature(a) == nyto.structure_signature(a * 2)
    b.extra = torch.nn.Parameter(torch.zeros(1))
    assert nyto.structure_signature(a) != nyto.structure_signature(b)
    hash(repr(nyto.structure_signature(a)))


@pytest.mark.parametrize("fn", [nyto.flat_storage, nyto.structure_signature])
def test_only_particles(fn):
    with pytest.raises(TypeError, match="NytoModule"):
        fn(torch.nn.Linear(2, 2))


def test_docstring_examples():
    class DocNet(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

    result = doctest.testmod(
        nytorch.storage, extraglobs={"Net": DocNet}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0
    assert result.failed == 0
