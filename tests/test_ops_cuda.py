"""CUDA fast route (csrc/cuda/kernels.cu) against per-tensor torch on CUDA.

Skipped without a GPU or when nytorch was built without its CUDA kernels.
"""

import pytest
import torch
from nytorch import ops
from nytorch._build_info import WITH_CUDA

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and WITH_CUDA), reason="needs a CUDA device and nytorch built with NYTO_CUDA"
)

DEVICE = "cuda"
SCALARS = {
    "pow_scalar": (1.7,),
    "rpow_scalar": (1.3,),
    "axpby": (0.7, -1.2),
    "lerp": (0.3,),
    "addcmul": (0.5,),
    "pso_velocity": (0.7, 1.5, 1.4),
    "fill": (2.5,),
}


def reference(name, xs, s):
    """One op on one index, plain torch."""
    x = xs[0]
    if name in ("add", "sub", "mul", "div", "pow"):
        return getattr(torch, name)(x, xs[1])
    if name.endswith("_scalar"):
        base = name[: -len("_scalar")]
        if base.startswith("r"):
            return {"rsub": lambda: s[0] - x, "rdiv": lambda: s[0] / x, "rpow": lambda: torch.pow(s[0], x)}[base]()
        return getattr(torch, base)(x, s[0])
    return {
        "neg": lambda: -x,
        "copy": lambda: x.clone(),
        "fill": lambda: torch.full_like(x, s[0]),
        "axpby": lambda: x * s[0] + xs[1] * s[1],
        "lerp": lambda: torch.lerp(x, xs[1], s[0]),
        "addcmul": lambda: torch.addcmul(x, xs[1], xs[2], value=s[0]),
        "pso_velocity": lambda: s[0] * x + s[1] * xs[4] * (xs[2] - xs[1]) + s[2] * xs[5] * (xs[3] - xs[1]),
    }[name]()


def make(sizes, dtype, misalign=False):
    """Positive tensors; with misalign, every other one starts 1 element into
    its storage (contiguous, but not 16-byte aligned: the scalar path)."""
    out = []
    for i, n in enumerate(sizes):
        off = int(misalign and i % 2)
        buf = torch.rand(n + off, device=DEVICE, dtype=torch.float32).add_(0.5).to(dtype)
        out.append(buf[off:])
    return out


def check(name, inplace, sizes, dtype, misalign=False):
    n_lists, _ = ops.ELEMENTWISE_OPS[name]
    s = SCALARS.get(name, (2.5,))[: ops.ELEMENTWISE_OPS[name][1]]
    lists = [make(sizes, dtype, misalign) for _ in range(n_lists + (name == "copy" and inplace))]
    # bfloat16/float16 are computed in float (opmath) and rounded once.
    ref_dt = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    if name == "copy" and inplace:
        want = [t.clone() for t in lists[1]]
    else:
        want = [reference(name, [l[i].to(ref_dt) for l in lists], s).to(dtype) for i in range(len(sizes))]
    if inplace:
        assert getattr(ops, name + "_")(*lists, *s) is None
        got = lists[0]
    else:
        got = getattr(ops, name)(*lists, *s)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, equal_nan=True)


SIZES = {"1": [3 * 65536 + 5], "3": [0, 7, 65537], "300": [1, 7, 0, 65537, 33] * 60}


@pytest.mark.parametrize("count", sorted(SIZES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("name", sorted(ops.ELEMENTWISE_OPS))
def test_op_matches_torch(name, inplace, dtype, count):
    check(name, inplace, SIZES[count], dtype, misalign=(count == "3"))


@pytest.mark.parametrize("name", ["add", "pso_velocity", "fill"])
def test_more_tensors_than_one_launch(name):
    # 1000 small tensors overflow a launch's tensor table (<= 124 slots); the
    # big one (513 chunks) overflows its 512-entry block table mid-tensor.
    sizes = [5] * 400 + [512 * 65536 + 3] + [5] * 600
    check(name, True, sizes, torch.float32)
    check(name, False, [3, 65536 * 2] * 200, torch.float16)


def test_runs_the_nytorch_kernel():
    # Guards against a silent fall back to the per-tensor ATen route.
    xs = make([1000, 3], torch.float32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ops.add_(xs, xs)
        torch.cuda.synchronize()
    assert any("mta_kernel" in e.name for e in prof.events()), [e.name for e in prof.events()]
