"""nytorch.fuse code generation (python/nytorch/_fuse/codegen.py, nvrtc.py).

Runnable without a GPU:
- the generated CUDA source of every op and of the PSO, EMA, soup, ES and DE
  programs compiles with NVRTC (skipped, saying why, when libnvrtc is not
  found: set NYTO_NVRTC to its path; .ci/run points it into the CUDA venv);
- the generated element function compiles as host C++ (g++, against the
  shared math header) and matches the CPU interpreter bit for bit on random
  inputs with NaN, inf and -0.0 (float32, float64, bfloat16), random
  streams (rand_like, randn_like) included;
- the disk cache hits in a second process; a corrupted file is rebuilt.
CUDA cases (generated vs interpreter values, aliasing, streams) skip without a GPU.
"""

import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import nytorch as nyto
import pytest
import torch
from nytorch._fuse import codegen as cg
from nytorch._fuse import nvrtc as _nvrtc
from nytorch._fuse.program import OPS

fuse = nyto.fuse


def _headers_reason():
    try:
        cg._find_include()
        return None
    except FileNotFoundError as e:
        return str(e)


NVRTC_REASON = cg.available()
needs_nvrtc = pytest.mark.skipif(NVRTC_REASON is not None, reason=f"no NVRTC here: {NVRTC_REASON}")
needs_headers = pytest.mark.skipif(_headers_reason() is not None, reason=str(_headers_reason()))
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ for the host build")
HAS_CUDA = torch.cuda.is_available() and torch.cuda.device_count() > 0
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")

# ---------------------------------------------------------------------------
# Programs
UNARY = ("neg", "pos", "abs", "sqrt", "exp", "log", "sign")
BINARY = ("add", "sub", "mul", "div", "pow", "min", "max", "lt", "le", "gt", "ge", "eq", "ne")
_F = {
    "neg": lambda x: -x,
    "pos": lambda x: +x,
    "abs": abs,
    "sqrt": lambda x: nyto.sqrt(x),
    "exp": lambda x: nyto.exp(x),
    "log": lambda x: nyto.log(x),
    "sign": lambda x: nyto.sign(x),
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "min": lambda a, b: nyto.minimum(a, b),
    "max": lambda a, b: nyto.maximum(a, b),
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
}
# ops whose value comes from a libm (the CPU interpreter: SLEEF vectors; host: glibc): within ulps
TRANSCENDENTAL = {"exp", "log", "pow"}


def op_programs():
    """name -> (program, numbers, transcendental) for every op, in each operand form."""
    out = {}
    for op in UNARY:
        out[op] = (fuse.program(_F[op], "p"), [], op in TRANSCENDENTAL)
    for op in BINARY:
        out[f"{op}_pp"] = (fuse.program(_F[op], "pp"), [], op in TRANSCENDENTAL)
        out[f"{op}_pn"] = (fuse.program(_F[op], "pn"), [0.75], op in TRANSCENDENTAL)
        out[f"{op}_np"] = (fuse.program(_F[op], "np"), [1.5], op in TRANSCENDENTAL)
    for e in (2.0, 3.0, 0.5, -1.0, -0.5, -2.0):  # torch's special exponents: exact forms
        out[f"pow_special_{e}"] = (fuse.program(lambda x, e: x**e, "pn"), [e], False)
    out["div_number"] = (fuse.program(lambda x, s: x / s, "pn"), [3.0], False)
    out["where"] = (fuse.program(lambda x, a, b: nyto.where(x > 0, a, b), "ppp"), [], False)
    out["where_n"] = (fuse.program(lambda x, a, s: nyto.where(x > 0, a, s), "ppn"), [2.5], False)
    out["lerp_ppp"] = (fuse.program(lambda x, e, w: nyto.lerp(x, e, w), "ppp"), [], False)
    out["lerp_ppn"] = (fuse.program(lambda x, e, w: nyto.lerp(x, e, w), "ppn"), [0.3], False)
    out["lerp_ppn_large"] = (fuse.program(lambda x, e, w: nyto.lerp(x, e, w), "ppn"), [0.8], False)
    out["fma"] = (fuse.program(lambda a, b, c: nyto.fma(a, b, c), "ppp"), [], False)
    out["muladd"] = (fuse.program(lambda a, b, c: a * b + c, "ppp"), [], False)
    out["muladd_n"] = (fuse.program(lambda a, b, s: s * a + b, "ppn"), [0.1], False)
    out["clamp"] = (fuse.program(lambda x, lo, hi: nyto.clamp(x, lo, hi), "pnn"), [-0.5, 0.5], False)
    out["rand"] = (fuse.program(lambda x: x + nyto.rand_like(x), "p"), [], False)
    out["rands"] = (fuse.program(lambda x, s: s * nyto.rand_like(x), "pn"), [1.7], False)
    out["randn"] = (fuse.program(lambda x: (nyto.randn_like(x), x * nyto.randn_like(x)), "p"), [], False)
    out["scalar_instr"] = (fuse.program(lambda x, d: (1 - d) * x + d / 3, "pn"), [0.9], False)
    out["store_number"] = (fuse.program(lambda x, s: (x * 2, s + 1), "pn"), [0.5], False)
    out["multi_out"] = (fuse.program(lambda x, y: (y - x, x * y, x), "pp"), [], False)
    names = set(OPS)
    if "hypot" in names:
        out["hypot"] = (fuse.program(lambda a, b: nyto.hypot(a, b), "pp"), [], True)
    return out


def _pso(x, v, p, g, w, c1, c2):
    v = w * v + c1 * nyto.rand_like(x) * (p - x) + c2 * nyto.rand_like(x) * (g - x)
    return x + v, v


def _ema(avg, new, d):
    return d * avg + (1 - d) * new


def _soup(m1, m2, m3, m4, m5, a1, a2, a3, a4, a5):
    return a1 * m1 + a2 * m2 + a3 * m3 + a4 * m4 + a5 * m5


def algorithm_programs():
    """name -> (program, numbers, uses randn): the programs the algorithms and benchmarks run."""
    from nytorch.algorithms import _sampling, de, pso

    return {
        "pso": (fuse.program(_pso, "ppppnnn"), [0.7, 1.5, 1.5], False),
        "pso_algorithm": (pso._program(False), [0.7, 1.5, 1.5], False),
        "pso_clamped": (pso._program(True), [0.7, 1.5, 1.5, -0.1, 0.1], False),
        "ema": (fuse.program(_ema, "ppn"), [0.9], False),
        "soup": (fuse.program(_soup, "pppppnnnnn"), [0.2, 0.2, 0.2, 0.2, 0.2], False),
        "es_ask": (_sampling._ask_program(4, True, False, True), [0.1], True),
        "es_ask_vector": (_sampling._ask_program(4, False, True, False), [], True),
        "es_sum": (_sampling._sum_program(4, True, False), [0.1] * 8, True),
        "es_sum_stored": (_sampling._sum_program(4, False, True), [0.1] * 4, False),
        "de_trial": (de._trial_program(), [0.5, 0.9], False),
    }


def all_ops_program():
    """One program using every op (each output one op): its source holds every op's code."""

    def fn(x, y, z, s):
        outs = [_F[op](x) for op in UNARY] + [_F[op](x, y) for op in BINARY] + [_F[op](x, s) for op in BINARY]
        outs += [
            nyto.where(x > y, y, z),
            nyto.lerp(x, y, z),
            nyto.lerp(x, y, s),
            nyto.fma(x, y, z),
            x * y + z,
            nyto.rand_like(x) * s,
            nyto.randn_like(x) + nyto.rand_like(x),
            x**2.0,
            x / s,
            nyto.clamp(x, s, y),  # the clamp op (maximum then minimum, fused)
        ]
        if "hypot" in OPS:
            outs.append(nyto.hypot(x, y))
        return tuple(outs)

    return fuse.program(fn, "pppn")


def test_every_op_has_a_program():
    covered = (
        {"load", "store", "rand", "randn", "rands", "muladd"}
        | set(UNARY)
        | set(BINARY)
        | {"where", "lerp", "fma", "hypot", "clamp"}
    )
    assert set(OPS) <= covered, f"ops without a codegen test: {set(OPS) - covered}"


def test_source_is_straight_line():
    prog = fuse.program(_pso, "ppppnnn")
    src = prog.cuda_source()
    assert '#include "nyto_math.h"' in src and '#include "fuse/fops.def"' in src
    assert "switch" not in src.split('extern "C"')[1]  # no interpreter loop in the kernel
    assert "const M v" in src and "store_pack" in src and "load_pack" in src
    assert "nyto::fuse::philox4x32_10" in src  # the shared Philox, not a copy
    for dt in cg.DTYPES:
        assert 'extern "C" __global__' in prog.cuda_source(dt)


# ---------------------------------------------------------------------------
# NVRTC (no GPU needed)
@needs_nvrtc
@pytest.mark.parametrize("dtype", list(cg.DTYPES), ids=str)
def test_nvrtc_compiles_every_op(dtype, tmp_path, monkeypatch):
    monkeypatch.setenv("NYTO_FUSE_CACHE", "0")
    key, cubin, name = cg.compile_program(all_ops_program(), dtype, arch=90)
    assert cubin[:4] == b"\x7fELF" and name == "nyto_fused"


@needs_nvrtc
def test_nvrtc_compiles_each_op_float32(monkeypatch):
    monkeypatch.setenv("NYTO_FUSE_CACHE", "0")
    for name, (prog, _, _) in op_programs().items():
        _, cubin, _ = cg.compile_program(prog, torch.float32, arch=80)
        assert cubin[:4] == b"\x7fELF", name


@needs_nvrtc
@pytest.mark.parametrize("name", list(algorithm_programs()))
def test_nvrtc_compiles_algorithm_programs(name, monkeypatch):
    monkeypatch.setenv("NYTO_FUSE_CACHE", "0")
    prog = algorithm_programs()[name][0]
    for dtype in (
        (torch.float32, torch.bfloat16, torch.float64, torch.float16)
        if name == "pso"
        else (torch.float32, torch.bfloat16)
    ):
        _, cubin, _ = cg.compile_program(prog, dtype, arch=90)
        assert cubin[:4] == b"\x7fELF", (name, dtype)


@needs_nvrtc
def test_no_fma_contraction_and_vector_accesses(monkeypatch):
    """--fmad=false: PSO (no fma asked) has no fma; 16-byte loads and stores."""
    prog = fuse.program(_pso, "ppppnnn")
    ptx, _, _ = _nvrtc.nvrtc().compile(
        prog.cuda_source(), "k.cu", ["--gpu-architecture=compute_90", *cg._OPTIONS], cg.kernel_headers(), cubin=False
    )
    ptx = ptx.decode(errors="replace")
    assert "fma.rn.f32" not in ptx
    assert "ld.global.v4.f32" in ptx and "st.global.v4.b32" in ptx
    fma_prog = fuse.program(lambda a, b, c: nyto.fma(a, b, c), "ppp")
    ptx2, _, _ = _nvrtc.nvrtc().compile(
        fma_prog.cuda_source(),
        "k.cu",
        ["--gpu-architecture=compute_90", *cg._OPTIONS],
        cg.kernel_headers(),
        cubin=False,
    )
    assert b"fma.rn.f32" in ptx2


# ---------------------------------------------------------------------------
# Host build vs the CPU interpreter
SPECIALS = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1.0, -1.0, 0.5, 2.0, -2.0, 3.0, 1e-30]


def _inputs(n_in, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    ins = []
    for _k in range(n_in):
        t = torch.randn(n, generator=g, dtype=torch.float64) * 2
        idx = torch.randperm(n, generator=g)[: len(SPECIALS) * 3]
        t[idx] = torch.tensor(SPECIALS * 3, dtype=torch.float64)[: len(idx)]
        ins.append(t.to(dtype))
    return ins


def _bits(t):
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[t.dtype])


def _ulps(a, b):
    a, b = a.double(), b.double()
    both_nan = a.isnan() & b.isnan()
    same_inf = a == b
    diff = (a - b).abs()
    scale = torch.maximum(a.abs(), b.abs()).clamp_min(1e-300)
    return torch.where(both_nan | same_inf, torch.zeros_like(diff), diff / scale)


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the host build")
    reason = _headers_reason()
    if reason:
        pytest.skip(reason)
    cases = []
    algos = {k: (prog, nums, False) for k, (prog, nums, _randn) in algorithm_programs().items()}  # all exact
    for name, (prog, nums, transc) in {**op_programs(), **algos}.items():
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            cases.append((name, prog, nums, transc, dtype))
    src = cg.host_source([(c[1], c[4]) for c in cases])
    d = tmp_path_factory.mktemp("host")
    (d / "gen.cpp").write_text(src)
    inc = [cg._find_include(), *__import__("torch.utils.cpp_extension").utils.cpp_extension.include_paths()]
    cmd = [
        "g++",
        "-std=c++17",
        "-O2",
        "-ffp-contract=off",
        "-fno-fast-math",
        "-shared",
        "-fPIC",
        "-w",
        *[f"-I{i}" for i in inc],
        str(d / "gen.cpp"),
        "-o",
        str(d / "gen.so"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    return ctypes.CDLL(str(d / "gen.so")), cases


def test_host_matches_interpreter_bit_for_bit(host_lib):
    lib, cases = host_lib
    n = 1003  # not a multiple of any vector width: the tail too
    failures = []
    for i, (name, prog, nums, transc, dtype) in enumerate(cases):
        ins = _inputs(prog.n_in, n, dtype, seed=i)
        seed, offset, group = 1234 + i, 5 * i, 0
        ref = fuse.run_flat(prog, [[t] for t in ins], nums, seed=seed, offset=offset)
        outs = [torch.empty(n, dtype=dtype) for _ in range(prog.n_out)]
        inp = (ctypes.c_uint64 * prog.n_in)(*[t.data_ptr() for t in ins])
        outp = (ctypes.c_uint64 * prog.n_out)(*[t.data_ptr() for t in outs])
        sv = cg._scalar_slots(prog, [*nums, *prog.lits])
        s = (ctypes.c_double * max(1, len(sv)))(*sv)
        getattr(lib, f"nyto_host_run_{i}")(
            ctypes.c_int64(n), inp, outp, s, ctypes.c_uint64(seed), ctypes.c_uint64(offset), ctypes.c_uint32(group)
        )
        for j in range(prog.n_out):
            a, b = outs[j], ref[j][0]
            nan_both = a.isnan() & b.isnan()
            same = (_bits(a) == _bits(b)) | nan_both
            if bool(same.all()):
                continue
            if transc:  # libm vs SLEEF: a few ulps
                tol = {torch.float32: 4e-7, torch.float64: 1e-15, torch.bfloat16: 8e-3}[dtype]
                if float(_ulps(a, b).max()) <= tol and bool((a.isnan() == b.isnan()).all()):
                    continue
            bad = (~same).nonzero()[0].item()
            failures.append(f"{name} {dtype} out {j}: [{bad}] host {a[bad].item()!r} interp {b[bad].item()!r}")
    assert not failures, "\n".join(failures[:30])


LAUNCH_CASES = (
    "pso",
    "pso_clamped",
    "ema",
    "soup",
    "de_trial",
    "multi_out",
    "rands",
    "randn",
    "es_ask",
    "store_number",
    "div_number",
    "lerp_ppn",
    "es_sum_stored",
)


def test_host_launch_matches_interpreter(host_lib):
    """The whole kernel on the host: packed launch arguments (several groups
    per launch, a table cut over launches), the block -> tensor search,
    16-byte packs and the tail, in place with outputs permuted over inputs,
    an unaligned group; against the CPU interpreter, bit for bit."""
    lib, cases = host_lib
    sizes = (1, 3, 4096, 4099, 16385, 70001)
    failures = []
    for i, (name, prog, nums, _, dtype) in enumerate(cases):
        if name not in LAUNCH_CASES:
            continue
        base = [[t for t in _inputs(prog.n_in, n + 1, dtype, seed=n)] for n in sizes]
        # group g of input k: sizes[g] elements, the last group starts one element in (unaligned)
        ins = [
            [base[g][k][1:] if g == len(sizes) - 1 else base[g][k][:-1] for g in range(len(sizes))]
            for k in range(prog.n_in)
        ]
        for inplace in (False, True):
            mine = [[t.clone() for t in lst] for lst in ins]
            theirs = [[t.clone() for t in lst] for lst in ins]
            if inplace and prog.n_out <= prog.n_in:  # output j writes input (j + 1) % n_in's memory
                out_m = [mine[(j + 1) % prog.n_in] for j in range(prog.n_out)]
                out_t = [theirs[(j + 1) % prog.n_in] for j in range(prog.n_out)]
            elif inplace:
                continue
            else:
                out_m = [[torch.empty_like(t) for t in ins[0]] for _ in range(prog.n_out)]
                out_t = None
            ref = fuse.run_flat(prog, theirs, nums, out=out_t, seed=99, offset=7)
            ref = out_t if inplace else ref
            sv = cg._scalar_slots(prog, [*nums, *prog.lits])
            groups = list(range(len(sizes)))
            for max_t in (None, 2):  # the table cut into launches of 2 groups too
                if max_t:
                    m2 = [[t.clone() for t in lst] for lst in ins]
                    o2 = (
                        [m2[(j + 1) % prog.n_in] for j in range(prog.n_out)]
                        if inplace
                        else [[torch.empty_like(t) for t in ins[0]] for _ in range(prog.n_out)]
                    )
                    tensors, outs = m2, o2
                else:
                    tensors, outs = mine, out_m
                packs = cg.launches(prog, tensors, outs, groups, dtype, sv, 99, 7)
                if max_t:
                    assert len(packs) == 1  # the table holds them all; cut by hand below
                    packs = []
                    for c0 in range(0, len(groups), max_t):
                        packs += cg.launches(
                            prog,
                            [
                                [lst[g] if g in groups[c0 : c0 + max_t] else lst[g] for g in range(len(groups))]
                                for lst in tensors
                            ],
                            outs,
                            groups[c0 : c0 + max_t],
                            dtype,
                            sv,
                            99,
                            7,
                        )
                for args, blocks in packs:
                    buf = ctypes.create_string_buffer(args, len(args))
                    getattr(lib, f"nyto_host_launch_{i}")(buf, ctypes.c_int64(blocks))
                for j in range(prog.n_out):
                    for g in groups:
                        a, b = outs[j][g], ref[j][g]
                        same = (_bits(a) == _bits(b)) | (a.isnan() & b.isnan())
                        if not bool(same.all()):
                            failures.append(f"{name} {dtype} inplace={inplace} max_t={max_t} out {j} group {g}")
    assert not failures, "\n".join(failures[:30])


def test_host_launch_reads_the_random_state(host_lib):
    """With a random state (``launches(..., state=address)``), the kernel takes
    the key from state[0] and adds state[1] to the offset, ignoring the int
    seed: here in host memory, against the interpreter's int route."""
    lib, cases = host_lib
    done = 0
    for i, (name, prog, nums, _, dtype) in enumerate(cases):
        if name not in ("pso", "rands"):
            continue
        n = 4099
        ins = [[t] for t in _inputs(prog.n_in, n, dtype, seed=3)]
        ref = fuse.run_flat(prog, ins, nums, seed=99, offset=7 + 5)
        outs = [[torch.empty(n, dtype=dtype)] for _ in range(prog.n_out)]
        st = torch.tensor([99, 5], dtype=torch.int64)
        sv = cg._scalar_slots(prog, [*nums, *prog.lits])
        for args, blocks in cg.launches(prog, ins, outs, [0], dtype, sv, 12345, 7, state=st.data_ptr()):
            buf = ctypes.create_string_buffer(args, len(args))
            getattr(lib, f"nyto_host_launch_{i}")(buf, ctypes.c_int64(blocks))
        for j in range(prog.n_out):
            a, b = outs[j][0], ref[j][0]
            assert bool(((_bits(a) == _bits(b)) | (a.isnan() & b.isnan())).all()), (name, dtype, j)
        assert st.tolist() == [99, 5]  # the launch reads it; run() advances it
        done += 1
    assert done == 6


# ---------------------------------------------------------------------------
# The disk cache (NVRTC, no GPU)
_CHILD = textwrap.dedent("""
    import json, torch, nytorch as nyto
    from nytorch._fuse import codegen as cg, nvrtc as _nvrtc
    prog = nyto.fuse.program(lambda x, v, w: (x + w * v, v * 0.5), "ppn")
    cg.compile_program(prog, torch.float32, arch=90)
    print(json.dumps(_nvrtc.stats))
""")


def _child(tmp_path, extra=None):
    env = dict(os.environ, NYTO_FUSE_CACHE_DIR=str(tmp_path), NYTO_FUSE_CACHE="1")
    env.update(extra or {})
    r = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@needs_nvrtc
def test_disk_cache_hits_in_a_second_process(tmp_path):
    first, err = _child(tmp_path, {"NYTO_FUSE_PRINT_SOURCE": "1"})
    assert first["compiles"] == 1 and first["disk"] == 0
    assert "nytorch.fuse generated kernel" in err and "nyto_fused" in err
    files = [f for f in os.listdir(tmp_path) if f.endswith(".cubin")]
    assert len(files) == 1 and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    second, _ = _child(tmp_path)
    assert second["compiles"] == 0 and second["disk"] == 1


@needs_nvrtc
def test_corrupted_cache_file_is_rebuilt(tmp_path):
    _child(tmp_path)
    (f,) = [tmp_path / f for f in os.listdir(tmp_path) if f.endswith(".cubin")]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    stats, _ = _child(tmp_path)
    assert stats["corrupt"] == 1 and stats["compiles"] == 1 and stats["disk"] == 0
    again, _ = _child(tmp_path)  # the rebuilt file is good
    assert again["disk"] == 1 and again["compiles"] == 0
    f.write_bytes(b"short")  # truncated
    stats, _ = _child(tmp_path)
    assert stats["corrupt"] == 1 and stats["compiles"] == 1


@needs_nvrtc
def test_cache_disabled(tmp_path):
    stats, _ = _child(tmp_path, {"NYTO_FUSE_CACHE": "0"})
    assert stats["compiles"] == 1 and not os.listdir(tmp_path)


def test_cache_key_parts():
    """The key covers the source (program, dtype, vector width)."""
    prog = fuse.program(lambda x, y: x * y, "pp")
    srcs = {prog.cuda_source(dt) for dt in cg.DTYPES} | {prog.cuda_source(torch.float32, vec=8)}
    assert len(srcs) == 5


# ---------------------------------------------------------------------------
# CUDA (skip without a device)
def _engine(name):
    prev = cg.set_engine(name)
    return prev


@needs_cuda
@needs_nvrtc
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_cuda_generated_equals_interpreter(dtype):
    cases = {**op_programs(), **algorithm_programs()}
    if dtype != torch.float32:  # every op in float32; the algorithms and a few ops in the others
        cases = {
            k: v
            for k, v in cases.items()
            if k in algorithm_programs()
            or k in ("add_pp", "div_number", "pow_special_2.0", "lerp_ppp", "rand", "rands", "randn", "min_pp", "sign")
        }
    for name, (prog, nums, _transc) in cases.items():
        for n in (1, 5, 4099, 70001):
            ins = [t.cuda() for t in _inputs(prog.n_in, n, dtype, seed=n)]
            prev = cg.set_engine("interp")
            try:
                ref = fuse.run_flat(prog, [[t] for t in ins], nums, seed=7, offset=3)
                cg.set_engine("codegen")
                got = fuse.run_flat(prog, [[t] for t in ins], nums, seed=7, offset=3)
            finally:
                cg.set_engine(prev)
            for j in range(prog.n_out):
                a, b = got[j][0], ref[j][0]
                same = (a == b) | (a.isnan() & b.isnan())
                assert bool(same.all()), (name, dtype, n, j)


@needs_cuda
@needs_nvrtc
def test_cuda_aliasing_and_groups():
    prog = fuse.program(_pso, "ppppnnn")
    prev = cg.set_engine("codegen")
    try:
        groups = [torch.randn(n, device="cuda") for n in (3, 4096, 100003)]
        x = [g.clone() for g in groups]
        v = [g * 0.1 for g in groups]
        p = [g + 1 for g in groups]
        b = [g - 1 for g in groups]
        rx, rv = fuse.run_flat(prog, [x, v, p, b], [0.7, 1.5, 1.5], seed=3)
        # in place, outputs permuted against the inputs: (x, v) <- step(x, v) with out=[v-slot, x-slot] swapped
        x2, v2 = [t.clone() for t in x], [t.clone() for t in v]
        fuse.run_flat(prog, [x2, v2, p, b], [0.7, 1.5, 1.5], out=[x2, v2], seed=3)
        for g in range(3):
            assert torch.equal(x2[g], rx[g]) and torch.equal(v2[g], rv[g])
        swap = fuse.program(lambda a, c: (c, a), "pp")
        a, c = [t.clone() for t in x], [t.clone() for t in v]
        fuse.run_flat(swap, [a, c], [], out=[a, c])
        for g in range(3):
            assert torch.equal(a[g], v[g]) and torch.equal(c[g], x[g])
        # a stacked [N, numel] swarm buffer and an unaligned view
        big = torch.randn(8, 1001, device="cuda")
        (res,) = fuse.run_flat(fuse.program(lambda t: t * 2 + 1, "p"), [[big]], [])
        assert torch.equal(res[0], big * 2 + 1)
        off = torch.randn(4099, device="cuda")[1:]
        (res,) = fuse.run_flat(fuse.program(lambda t: t * 2 + 1, "p"), [[off]], [])
        assert torch.equal(res[0], off * 2 + 1)
    finally:
        cg.set_engine(prev)


@needs_cuda
@needs_nvrtc
def test_cuda_uniform_streams_equal_cpu():
    prog = fuse.program(lambda x, s: (nyto.rand_like(x), s * nyto.rand_like(x)), "pn")
    prev = cg.set_engine("codegen")
    try:
        for dtype in (torch.float32, torch.float64):
            x = torch.zeros(10007, dtype=dtype)
            cpu = fuse.run_flat(prog, [[x]], [3.0], seed=11, offset=5)
            gpu = fuse.run_flat(prog, [[x.cuda()]], [3.0], seed=11, offset=5)
            for j in range(2):
                assert torch.equal(cpu[j][0], gpu[j][0].cpu())
    finally:
        cg.set_engine(prev)


@needs_cuda
def test_cuda_fallback_warns_once(monkeypatch):
    """Without NVRTC (here: pretended), calls run on the interpreter with one warning naming the reason."""
    import warnings

    monkeypatch.setattr(cg, "available", lambda: "pretended: no libnvrtc")
    monkeypatch.setattr(cg, "_WARNED", {})
    prev = cg.set_engine("codegen")
    try:
        prog = fuse.program(lambda x, s: x * s + 1, "pn")
        x = torch.arange(10.0, device="cuda")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            (r1,) = fuse.run_flat(prog, [[x]], [2.0])
            fuse.run_flat(prog, [[x]], [2.0])
        msgs = [str(m.message) for m in w if "interpreter" in str(m.message)]
        assert len(msgs) == 1 and "pretended: no libnvrtc" in msgs[0]
        assert torch.equal(r1[0], x * 2 + 1)
    finally:
        cg.set_engine(prev)
