"""Normals (``randn_like``) are the same bits on every engine: one definition
of the Box-Muller math (csrc/fuse/normal_math.h), which the CPU builds
(DEFAULT: that scalar code; AVX2: its vector form), the CUDA interpreter and
the generated kernels all compute.

- the portable CPU build (``ATEN_CPU_CAPABILITY=default``) and the AVX2 build
  give identical bits: float32, float64, bfloat16, odd offsets and lengths,
  several groups and streams, the low counter word wrapping;
- frozen values: today's streams (issue 13) do not change unnoticed;
- accuracy against a reference built from the uniform stream of the same
  counters (float64 math for float32, mpmath for float64);
- NVRTC (no GPU): the generated normals' PTX does not depend on ``--fmad``;
- CUDA (skips without a GPU): interpreter and generated kernels equal the CPU bits.
(tests/test_codegen.py compares the generated host code with the CPU
interpreter, randn included; tests/test_fuse.py holds the moments and tails.)
"""

import hashlib
import os
import subprocess
import sys
import tempfile

import nytorch as nyto
import pytest
import torch
from nytorch import fuse as F
from nytorch._fuse import codegen as cg

HAS_CUDA = torch.cuda.is_available() and nyto._C.has_cuda()
NVRTC_REASON = cg.available()

# (dtype, numel per group, groups, offset): ragged heads and tails around the
# 8-counter steps, odd offsets (a pair cut at the start), the low counter word
# wrapping inside a call (offsets just under 2^32 counters)
DRAWS = [
    ("float32", 1 << 18, 1, 0),
    ("float32", 4099, 2, 3),
    ("float32", 1001, 1, 7),
    ("float32", 37, 3, 1),
    ("float32", 5, 1, 2),
    ("float32", 200, 1, ((1 << 32) - 5 << 2) + 1),
    ("float64", 1 << 17, 1, 0),
    ("float64", 4099, 2, 3),
    ("float64", 1001, 1, 7),
    ("float64", 37, 3, 1),
    ("float64", 200, 1, ((1 << 32) - 5 << 1) + 1),
    ("bfloat16", 4099, 2, 5),
]

_CODE = """
import sys, torch, nytorch as nyto
prog = nyto.fuse.program(lambda x: (nyto.randn_like(x), x + nyto.randn_like(x)), "p")
outs = []
for dt, n, groups, off in eval(sys.argv[2]):
    xs = [torch.full((n,), float(g), dtype=getattr(torch, dt)) for g in range(groups)]
    outs.append(nyto.fuse.run_flat(prog, [xs], seed=12345, offset=off))
torch.save((nyto._C.cpu_isa(), outs), sys.argv[1])
"""


def _draws(device="cpu"):
    prog = F.program(lambda x: (nyto.randn_like(x), x + nyto.randn_like(x)), "p")
    outs = []
    for dt, n, groups, off in DRAWS:
        xs = [torch.full((n,), float(g), dtype=getattr(torch, dt), device=device) for g in range(groups)]
        outs.append(F.run_flat(prog, [xs], seed=12345, offset=off))
    return outs


def _bits(t):
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64}.get(t.dtype, torch.int16))


def _same(a, b):
    return all(torch.equal(_bits(x.cpu()), _bits(y.cpu())) for p, q in zip(a, b) for x, y in zip(p, q))


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_cpu_builds_give_the_same_normals(capability):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "z.pt")
        subprocess.run([sys.executable, "-c", _CODE, path, repr(DRAWS)], env=env, check=True)
        isa, theirs = torch.load(path)
    if capability == "default":
        assert isa == "DEFAULT"
    mine = _draws()
    for case, a, b in zip(DRAWS, mine, theirs):
        assert _same(a, b), (isa, nyto._C.cpu_isa(), case)


def test_normals_are_todays_streams():
    # The streams of issue 13, frozen: float32 as the AVX2 build has drawn
    # them since it was written; float64 since normal_math.h replaced SLEEF.
    prog = F.program(lambda x: nyto.randn_like(x), "p")
    first = {
        torch.float32: [0xBDEF724E, 0x3F7F7396, 0x3E1C1896, 0x3DB4EE8B, 0xBFAB7EF4, 0x3F1224AD],
        torch.float64: [0x3FEFFFDD037EF27E, 0xBFB8D99D8824C9E9, 0x3FF2AB3BC6FDA00B, 0xBFEBE3899B84B8D8],
    }
    digests = {torch.float32: "73ec70ca53147e03", torch.float64: "e78fd8bb8898671d"}  # 2^16 values
    for dtype, want in first.items():
        z = F.run_flat(prog, [[torch.zeros(1 << 16, dtype=dtype)]], seed=2024)[0][0]
        got = [int(v) & ((1 << (8 * z.element_size())) - 1) for v in _bits(z[: len(want)])]
        assert got == want, (dtype, [hex(v) for v in got])
        assert hashlib.sha256(z.numpy().tobytes()).hexdigest()[:16] == digests[dtype], dtype


def _uniform_reference(dtype, n, seed):
    """The Box-Muller pairs (u1, u2) of randn's elements 2j, 2j + 1: the
    uniforms of rand_like at those elements (the same counters and words),
    u1 moved from [0, 1) to (0, 1]."""
    eps = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    u = F.run_flat(F.program(lambda x: nyto.rand_like(x), "p"), [[torch.zeros(n, dtype=dtype)]], seed=seed)[0][0]
    z = F.run_flat(F.program(lambda x: nyto.randn_like(x), "p"), [[torch.zeros(n, dtype=dtype)]], seed=seed)[0][0]
    return u.double()[0::2] + eps, u.double()[1::2], z


def _ulp(x, dtype):
    a = x.abs().to(dtype)
    return (torch.nextafter(a, torch.tensor(float("inf"), dtype=dtype)) - a).double()


def test_float32_normals_within_a_few_ulps():
    u1, u2, z = _uniform_reference(torch.float32, 1 << 20, seed=5)
    r = torch.sqrt(-2 * torch.log(u1)).repeat_interleave(2)
    ref = torch.empty(z.numel(), dtype=torch.float64)
    ref[0::2] = torch.cos(2 * torch.pi * u2)
    ref[1::2] = torch.sin(2 * torch.pi * u2)
    ref = ref * r
    # float64 is exact enough where |cos|, |sin| > 1e-6 (its sin/cos of 2 pi u
    # are good to ~1e-16 absolute); elsewhere the error is judged against r
    err = (z.double() - ref).abs()
    big = ref.abs() > 1e-6 * r
    assert float((err[big] / _ulp(ref[big], torch.float32)).max()) <= 4  # measured 3.3
    assert float((err / _ulp(r, torch.float32)).max()) <= 4


def test_float64_normals_within_a_few_ulps():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    u1, u2, z = _uniform_reference(torch.float64, 6000, seed=6)
    worst = 0.0
    for j in range(u1.numel()):
        r = mpmath.sqrt(-2 * mpmath.log(mpmath.mpf(float(u1[j]))))
        a = 2 * mpmath.pi * mpmath.mpf(float(u2[j]))
        for got, ref in ((float(z[2 * j]), r * mpmath.cos(a)), (float(z[2 * j + 1]), r * mpmath.sin(a))):
            scale = torch.tensor(max(abs(float(ref)), float(r) * 1e-6), dtype=torch.float64)
            worst = max(worst, float(abs(mpmath.mpf(got) - ref)) / float(_ulp(scale, torch.float64)))
    assert worst <= 4, worst  # measured 3.2 over 2^20 pairs (offline, quad precision)


@pytest.mark.skipif(NVRTC_REASON is not None, reason=f"no NVRTC here: {NVRTC_REASON}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_generated_normals_do_not_depend_on_fmad(dtype):
    # every rounding step of normal_math.h is an explicit _rn intrinsic: with
    # contraction allowed, the PTX differs at most in the .rn tags of the
    # (exact) uniform scalings, never by a fused product
    from nytorch._fuse import nvrtc as _nvrtc

    src = F.program(lambda x: nyto.randn_like(x), "p").cuda_source(dtype)
    ptx = []
    for fmad in ("--fmad=false", "--fmad=true"):
        opts = ["--gpu-architecture=compute_90", *[o for o in cg._OPTIONS if not o.startswith("--fmad")], fmad]
        text = _nvrtc.nvrtc().compile(src, "k.cu", opts, cg.kernel_headers(), cubin=False)[0].decode()
        ptx.append(text.replace(".rn.", "."))
    assert ptx[0] == ptx[1]
    assert "sin" not in ptx[0] and "lg2" not in ptx[0]  # no CUDA math library: the polynomials


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device/kernels")
@pytest.mark.parametrize("engine", ["interp", "codegen"])
def test_cuda_normals_equal_cpu(engine):
    if engine == "codegen" and NVRTC_REASON is not None:
        pytest.skip(f"no NVRTC here: {NVRTC_REASON}")
    prev = cg.set_engine(engine)
    try:
        gpu = _draws("cuda")
    finally:
        cg.set_engine(prev)
    for case, a, b in zip(DRAWS, _draws(), gpu):
        assert _same(a, b), (engine, case)
    # float16 computes in float: the float32 stream rounded
    prog = F.program(lambda x: nyto.randn_like(x), "p")
    prev = cg.set_engine(engine)
    try:
        h = F.run_flat(prog, [[torch.zeros(4099, dtype=torch.float16, device="cuda")]], seed=9, offset=1)[0][0]
    finally:
        cg.set_engine(prev)
    f = F.run_flat(prog, [[torch.zeros(4099)]], seed=9, offset=1)[0][0]
    assert torch.equal(_bits(h.cpu()), _bits(f.to(torch.float16)))
