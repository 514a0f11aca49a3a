#!/usr/bin/env python
"""Benchmark of particle operations: ``nytorch.NytoModule`` against nytorch 1.1.0.

nytorch 1.1.0 (PyPI, pure Python) has the same import name as this project;
it is installed into ``benchmarks/.nytorch110/`` (git-ignored; this script
runs ``pip install --no-deps --target`` itself when it is missing) and loaded
under the alias ``nytorch110`` without touching our ``nytorch``.

For each workload (tiny = a 2-parameter Linear-like module, MLP, many-small
1000 x [64], ResNet-18, big ~50M) and particle op (``a + b``, ``a * 2``,
``a += b``, ``a.clone()``, ``a.randn()``, one PSO step written as particle
arithmetic) it compares, in one process and interleaved:

  ours     nytorch.NytoModule particles ("n/a" until nytorch.NytoModule exists)
  1.1.0    nytorch 1.1.0 particles (the same code)
  foreach  torch._foreach_* on plain parameter lists (clone/randn: a list
           comprehension, there is no foreach form)
  flat     one op on one flat buffer: in place for ``+=``, into a preallocated
           result (out=) for out-of-place ops (the floor)

    python benchmarks/bench_particles.py [--quick] [--json out.json]
    python benchmarks/bench_particles.py --rss [ours|110|both]

``--rss``: 1000 rounds of ``net = 0.5 * net + 1`` on a ResNet-18-sized
particle, printing resident memory and the loop's elapsed time every 100
rounds (no gc.collect()), then the loop's total time and time per round.
(tests/test_particle.py checks the memory bound of such a loop; its speed is
measured here, not asserted there.)
Exit code is 0 whatever the targets say (they are informational).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.machinery
import operator
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _timing as T  # noqa: E402
import nytorch  # noqa: E402  (ours)

V110_DIR = os.path.join(HERE, ".nytorch110")
V110_VERSION = "1.1.0"
W, C1, C2 = 0.7, 1.5, 1.5

# Targets (informational)
TGT_TINY_ADD_US = 5.0  # a + b on the 2-parameter model, us
TGT_TINY_IADD_US = 1.5  # a += b on the 2-parameter model, us
TGT_SMALL_INPLACE = 3.0  # many-small: a += b within 3x of the flat op
TGT_SMALL_VS_110 = 30.0  # many-small: out-of-place >= 30x faster than 1.1.0
TGT_BIG_INPLACE = 1.15  # resnet18/big: a += b within 1.15x of the flat op
TGT_BIG_OUT = 1.20  # resnet18/big: out-of-place within 1.2x of the flat op with out=
MEM_BOUND = ("resnet18", "big")
OUT_OF_PLACE = ("a + b", "a * 2", "a.clone()")


# ---------------------------------------------------------------------------
# nytorch 1.1.0 under an alias
def load_nytorch110(target: str = V110_DIR):
    """Import nytorch 1.1.0 from ``target`` as ``nytorch110`` (installing it if missing).

    While it imports, a meta-path finder placed first answers ``nytorch`` and
    ``nytorch.*`` from ``target`` only (our editable install has its own
    finder, which would otherwise win), and our modules are out of
    sys.modules. Afterwards its modules are registered as ``nytorch110*`` and
    ours are put back, so ``import nytorch`` still gives ours.
    """
    pkg_dir = os.path.join(target, "nytorch")
    if not os.path.isfile(os.path.join(pkg_dir, "__init__.py")):
        print(
            f"nytorch {V110_VERSION} not found in {target}: installing it there (pip install --no-deps --target ...)",
            flush=True,
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, f"nytorch=={V110_VERSION}"],
            check=True,
        )

    class _Finder:
        @staticmethod
        def find_spec(name, path=None, target_=None):
            if name == "nytorch":
                return importlib.machinery.PathFinder.find_spec(name, [target])
            if name.startswith("nytorch."):
                return importlib.machinery.PathFinder.find_spec(name, [pkg_dir])
            return None

    def ours_mods():
        return {k: v for k, v in sys.modules.items() if k == "nytorch" or k.startswith("nytorch.")}

    saved = ours_mods()
    for k in saved:
        del sys.modules[k]
    sys.meta_path.insert(0, _Finder)
    loaded = {}
    try:
        mod = importlib.import_module("nytorch")
        loaded = ours_mods()
    finally:
        sys.meta_path.remove(_Finder)
        for k in ours_mods():
            del sys.modules[k]
        sys.modules.update(saved)
    for k, v in loaded.items():
        sys.modules["nytorch110" + k[len("nytorch") :]] = v
    return mod


def self_check(v110) -> None:
    import nytorch as again

    ours_file = os.path.abspath(again.__file__)
    print(f"ours : nytorch {again.__version__}  {ours_file}")
    print(f"1.1.0: nytorch110  {v110.__file__}  (module.py: {v110.module.__file__})")
    assert again is nytorch, "import nytorch no longer gives ours"
    assert not ours_file.startswith(os.path.abspath(V110_DIR)), ours_file
    for name, m in sys.modules.items():
        if name == "nytorch110" or name.startswith("nytorch110."):
            f = getattr(m, "__file__", None)
            assert f is None or os.path.abspath(f).startswith(os.path.abspath(V110_DIR)), (name, f)


# ---------------------------------------------------------------------------
# Particles
def particle_class(base):
    class Params(base):
        """Parameters of the given shapes: a Linear-like module for 2 shapes,
        else a ParameterList."""

        def __init__(self, shapes):
            super().__init__()
            if len(shapes) == 2:
                self.weight = torch.nn.Parameter(torch.randn(shapes[0]))
                self.bias = torch.nn.Parameter(torch.randn(shapes[1]))
            else:
                self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s)) for s in shapes])

        def forward(self, x):
            return x

    Params.__name__ = Params.__qualname__ = f"Params[{base.__module__}]"
    return Params


def particle_cases(cls, shapes, label):
    """name -> fn for one particle implementation (empty or None where it can't run)."""
    if cls is None:
        return {}
    try:
        return _particle_cases(cls, shapes, label)
    except Exception as e:  # noqa: BLE001  (a half-built implementation: report, go on)
        print(f"  [{label}] setup failed, column n/a: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return {}


def _particle_cases(cls, shapes, label):
    a = cls(shapes)
    b = a.clone()
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1e-3)
    x = a.clone()
    st = dict(v=x.randn() * 0.1, p=x.randn(), g=x.randn())
    rand = (lambda t: t.rand()) if hasattr(x, "rand") else (lambda t: t.randn())

    def pso():
        v, p, g = st["v"], st["p"], st["g"]
        r1, r2 = rand(x), rand(x)
        v = W * v + C1 * r1 * (p - x) + C2 * r2 * (g - x)
        x.__iadd__(v)  # x += v (x is a local of the closure's owner)
        st["v"] = v

    fns = {
        "a + b": lambda: a + b,
        "a * 2": lambda: a * 2,
        "a += b": lambda: operator.iadd(a, b),
        "a.clone()": lambda: a.clone(),
        "a.randn()": lambda: a.randn(),
        "pso step": pso,
    }
    return {k: T.probe(f, f"{label} {k}") for k, f in fns.items()}


def torch_cases(shapes):
    """(foreach, flat) name -> fn on plain tensors."""
    n = T.numel(shapes)
    pa = [torch.randn(s) for s in shapes]
    pb = [torch.randn(s) * 1e-3 for s in shapes]
    fa, fb, fo = torch.randn(n), torch.randn(n) * 1e-3, torch.empty(n)
    X, P, G = ([torch.randn(s) for s in shapes] for _ in range(3))
    V = [torch.randn(s) * 0.1 for s in shapes]
    fx, fp, fg, fv, r1, r2, t1, t2 = (torch.randn(n) for _ in range(8))

    def pso_foreach():
        R1 = [torch.rand_like(t) for t in X]
        R2 = [torch.rand_like(t) for t in X]
        d1 = torch._foreach_sub(P, X)
        d2 = torch._foreach_sub(G, X)
        torch._foreach_mul_(V, W)
        torch._foreach_addcmul_(V, R1, d1, value=C1)
        torch._foreach_addcmul_(V, R2, d2, value=C2)
        torch._foreach_add_(X, V)

    def pso_flat():  # the same chain on flat buffers, temporaries preallocated
        r1.uniform_()
        r2.uniform_()
        torch.sub(fp, fx, out=t1)
        torch.sub(fg, fx, out=t2)
        fv.mul_(W).addcmul_(r1, t1, value=C1).addcmul_(r2, t2, value=C2)
        fx.add_(fv)

    def pso_flat_fused():  # the best this library can do: one fused pass (+ RNG, x += v)
        r1.uniform_()
        r2.uniform_()
        nytorch.ops.pso_velocity_([fv], [fx], [fp], [fg], [r1], [r2], W, C1, C2)
        fx.add_(fv)

    foreach = {
        "a + b": lambda: torch._foreach_add(pa, pb),
        "a * 2": lambda: torch._foreach_mul(pa, 2),
        "a += b": lambda: torch._foreach_add_(pa, pb),
        "a.clone()": lambda: [t.clone() for t in pa],
        "a.randn()": lambda: [torch.randn_like(t) for t in pa],
        "pso step": pso_foreach,
    }
    flat = {
        "a + b": lambda: torch.add(fa, fb, out=fo),
        "a * 2": lambda: torch.mul(fa, 2, out=fo),
        "a += b": lambda: fa.add_(fb),
        "a.clone()": lambda: fo.copy_(fa),
        "a.randn()": lambda: fo.normal_(),
        "pso step": pso_flat,
    }
    return foreach, flat, pso_flat_fused


def targets_for(name, op, m):
    """(description, ok) of the target that applies to this row, if any."""
    ours, v110, flat = m["ours"], m["1.1.0"], m["flat"]
    if name == "tiny" and op == "a + b":
        return f"<= {TGT_TINY_ADD_US:g} us", T.check(ours * 1e6, TGT_TINY_ADD_US)
    if name == "tiny" and op == "a += b":
        return f"<= {TGT_TINY_IADD_US:g} us", T.check(ours * 1e6, TGT_TINY_IADD_US)
    if name == "many-small" and op == "a += b":
        return f"ours/flat <= {TGT_SMALL_INPLACE:g}", T.check(T.ratio(ours, flat), TGT_SMALL_INPLACE)
    if name == "many-small" and op in OUT_OF_PLACE:
        return f"1.1.0/ours >= {TGT_SMALL_VS_110:g}", T.check(T.ratio(v110, ours), TGT_SMALL_VS_110, at_most=False)
    if name in MEM_BOUND and op == "a += b":
        return f"ours/flat <= {TGT_BIG_INPLACE:g}", T.check(T.ratio(ours, flat), TGT_BIG_INPLACE)
    if name in MEM_BOUND and op in OUT_OF_PLACE:
        return f"ours/flat(out=) <= {TGT_BIG_OUT:g}", T.check(T.ratio(ours, flat), TGT_BIG_OUT)
    return "", None


def bench(args, v110) -> int:
    watch = T.Stopwatch()
    Ours = particle_class(nytorch.NytoModule) if hasattr(nytorch, "NytoModule") else None
    Old = particle_class(v110.NytoModule)
    if Ours is None:
        print("nytorch.NytoModule does not exist yet: the 'ours' column is n/a")
    rows, pso_rows, results = [], [], []
    for name, shapes in T.workloads(args.quick).items():
        if args.only and name not in args.only.split(","):
            continue
        n = T.numel(shapes)
        big = n > 5_000_000
        skip_110 = args.quick and name == "big"
        print(
            f"  {name}: {len(shapes)} tensors, {n:,} elements ... ({watch():.0f}s)"
            + ("  [1.1.0 skipped in --quick]" if skip_110 else ""),
            flush=True,
        )
        torch.manual_seed(0)
        ours = particle_cases(Ours, shapes, f"{name} ours")
        old = {} if skip_110 else particle_cases(Old, shapes, f"{name} 1.1.0")
        foreach, flat, pso_fused = torch_cases(shapes)
        for op in foreach:
            fns = {"ours": ours.get(op), "1.1.0": old.get(op), "foreach": foreach[op], "flat": flat[op]}
            if op == "pso step":
                fns["flat-fused"] = pso_fused
            t = T.compare(
                fns,
                rounds=args.rounds,
                block_s=args.block_s,
                budget_s=args.budget_big if big else args.budget_small,
                min_rounds=args.min_rounds,
                slow_s=0.2 if args.quick else 1.0,
            )
            m = {k: v.median for k, v in t.items()}
            desc, ok = targets_for(name, op, m)
            rows.append(
                [
                    name,
                    op,
                    T.us(m["ours"]),
                    T.us(m["1.1.0"]),
                    T.us(m["foreach"]),
                    T.us(m["flat"]),
                    T.fmt_ratio(T.ratio(m["ours"], m["flat"])),
                    T.fmt_ratio(T.ratio(m["1.1.0"], m["ours"])),
                    T.fmt_ratio(T.ratio(m["foreach"], m["ours"])),
                    T.worst_spread(t),
                    desc,
                    T.verdict(ok, bool(desc)),
                ]
            )
            if op == "pso step":
                pso_rows.append(
                    [
                        name,
                        T.us(m["ours"]),
                        T.us(m["flat"]),
                        T.us(m["flat-fused"]),
                        T.fmt_ratio(T.ratio(m["ours"], m["flat-fused"])),
                    ]
                )
            results.append(
                dict(
                    workload=name,
                    op=op,
                    tensors=len(shapes),
                    numel=n,
                    us={k: v * 1e6 for k, v in m.items()},
                    min_us=T.mins_us(t),
                    target=desc,
                    ok=ok,
                )
            )
        del ours, old, foreach, flat, pso_fused
        gc.collect()
    T.print_table(
        [
            "workload",
            "op",
            "ours us",
            "1.1.0 us",
            "foreach us",
            "flat us",
            "ours/flat",
            "1.1.0/ours",
            "foreach/ours",
            "IQR",
            "target",
            "",
        ],
        rows,
        title="Particle ops (float32, per-call medians)",
    )
    print(
        "flat: in-place op on one flat buffer, or out-of-place into a preallocated result (out=);\n"
        "pso step: r1, r2 = x.rand(); v = w*v + c1*r1*(p - x) + c2*r2*(g - x); x += v"
    )
    T.print_table(
        ["workload", "ours us", "flat chain us", "flat fused us", "ours/fused"],
        pso_rows,
        title="PSO step detail (flat fused: 2 RNG fills + one pso_velocity_ + x += v on flat buffers)",
    )
    T.finish("bench_particles", results, watch(), "cpu", args.json, quick=args.quick, has_ours=Ours is not None)
    return 0


def rss_check(which: str, v110, rounds: int = 1000, every: int = 100) -> int:
    shapes = T.resnet18_shapes()
    impls = []
    if which in ("ours", "both"):
        if hasattr(nytorch, "NytoModule"):
            impls.append(("ours", particle_class(nytorch.NytoModule)))
        else:
            print("nytorch.NytoModule does not exist yet: skipping ours")
    if which in ("110", "both"):
        impls.append(("1.1.0", particle_class(v110.NytoModule)))
    mib = 1 << 20
    size = T.numel(shapes) * 4
    for label, cls in impls:
        torch.manual_seed(0)
        net = cls(shapes)
        base = T.rss_bytes()
        print(
            f"\n--rss {label}: {rounds} rounds of net = 0.5 * net + 1 on a ResNet-18-sized particle "
            f"({size / mib:.1f} MiB of parameters), no gc.collect()"
        )
        print(f"{'round':>6} {'RSS MiB':>9} {'growth MiB':>11} {'particles':>10} {'elapsed s':>10}")
        print(f"{0:>6} {base / mib:>9.1f} {0.0:>11.1f} {0.0:>10.1f} {0.0:>10.2f}", flush=True)
        watch = T.Stopwatch()
        for i in range(1, rounds + 1):
            net = 0.5 * net + 1
            if i % every == 0:
                t = watch()  # before reading RSS: the loop's time only (the prints add little)
                r = T.rss_bytes()
                print(
                    f"{i:>6} {r / mib:>9.1f} {(r - base) / mib:>11.1f} {(r - base) / size:>10.1f} {t:>10.2f}",
                    flush=True,
                )
        total = watch()
        print(
            f"{label}: {rounds} rounds in {total:.2f} s, {total / rounds * 1e3:.1f} ms per round; "
            f"gc counts {gc.get_count()}"
        )
        del net
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, 1.1.0 skipped on 'big' (~1 minute)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--only", help="comma-separated workloads (tiny,mlp,many-small,resnet18,big)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument(
        "--rss",
        nargs="?",
        const="ours",
        choices=["ours", "110", "both"],
        help="memory check instead of timings (default: ours)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.rounds = 31 if args.quick else 101
    # Blocks of ~2 ms: steady back-to-back calls, as a training loop makes
    # them. (With 0.3 ms blocks a block was ~3 calls of a many-small op, so
    # the first call after 1.1.0's 10 ms of cache churn dominated: a
    # cold-cache measurement of every candidate.)
    args.block_s = 1e-3 if args.quick else 2e-3
    args.budget_small = 0.3 if args.quick else 1.5
    args.budget_big = 1.0 if args.quick else 4.0
    args.min_rounds = 2 if args.quick else 3

    v110 = load_nytorch110()
    print(f"bench_particles: {T.machine_line('cpu')}")
    if T.load_warning():
        print(T.load_warning())
    self_check(v110)
    if args.rss:
        return rss_check(args.rss, v110)
    return bench(args, v110)


if __name__ == "__main__":
    sys.exit(main())
