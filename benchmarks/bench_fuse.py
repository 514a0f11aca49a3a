#!/usr/bin/env python
"""Benchmark of ``nytorch.fuse``: whole updates in one pass over memory.

Updates (float32, every one written in place into its particles):

  pso    v = w*v + c1*r1*(p - x) + c2*r2*(g - x); x = x + v   (r1, r2 uniform, drawn per call)
  ema    avg = d*avg + (1 - d)*new
  soup   out = a1*m1 + a2*m2 + a3*m3 + a4*m4 + a5*m5          (5-model weighted soup)

on the workloads resnet18 (62 tensors, 11.7M) and big (148 tensors, ~50M)
of ``_timing.workloads`` (tiny: per-call overhead), against, in one process
and interleaved (``_timing.compare``):

  particle  the op-by-op particle chain (``w*v + c1*x.rand()*(p - x) + ...``)
  foreach   a torch._foreach_* chain on the parameter lists (PSO: r1, r2 from
            one torch.rand into a persistent flat buffer)
  compile   torch.compile (inductor) of the same update on the flat buffers
            (compile time reported separately; n/a when inductor fails here)
  floor     memory-traffic floor: bytes the update must move (PSO 24, EMA 12,
            soup 24 bytes/element) at the bandwidth of a 256 MiB a.add_(b)
            (12 bytes/element) measured in the same compare
  ours      the fused update (``step(..., out=...)``)

Targets: ours/floor <= 1.3 on resnet18/big (CPU) and foreach/ours >= 3.5 for
PSO; on CUDA, ours' bandwidth >= 80% of a device copy's; first-call trace
< 5 ms; per-call overhead on the tiny (2-parameter) model < 10 us.

    python benchmarks/bench_fuse.py [--quick] [--device cpu|cuda] [--only resnet18,big] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing as T  # noqa: E402
import nytorch as nyto  # noqa: E402

W, C1, C2, D = 0.7, 1.5, 1.5, 0.9
ALPHAS = (0.1, 0.2, 0.3, 0.25, 0.15)
BYTES = {"pso": 24, "ema": 12, "soup": 24}  # float32 bytes per element the update must move
TGT_FLOOR, TGT_FOREACH, TGT_GPU_COPY = 1.3, 3.5, 0.8
TGT_TRACE_MS, TGT_CALL_US = 5.0, 10.0
MEM_BOUND = ("resnet18", "big")


# ---------------------------------------------------------------------------
# The updates
def pso(x, v, p, g, w, c1, c2):
    v = w * v + c1 * nyto.rand_like(x) * (p - x) + c2 * nyto.rand_like(x) * (g - x)
    return x + v, v


def ema(avg, new, d):
    return d * avg + (1 - d) * new


def soup(m1, m2, m3, m4, m5, a1, a2, a3, a4, a5):
    return a1 * m1 + a2 * m2 + a3 * m3 + a4 * m4 + a5 * m5


class Shapes(nyto.NytoModule):
    """A particle with parameters of the given shapes."""

    def __init__(self, shapes, device):
        super().__init__()
        for i, s in enumerate(shapes):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.randn(s, device=device) * 0.1))


def flats(p):
    from nytorch._storage import state_of

    (f,) = state_of(p).flats
    return f


def compiled(fn, label, args):
    """torch.compile(fn) and its compile time (first call), or (None, nan)."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.force_disable_caches = True  # a cold compile: what a fresh process pays
        torch._dynamo.reset()
        cf = torch.compile(fn, dynamic=False)
        t0 = time.perf_counter()
        cf(*args)
        if args[0].is_cuda:
            torch.cuda.synchronize()
        return (lambda: cf(*args)), time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        print(f"  [{label} compile] n/a: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return None, math.nan


# ---------------------------------------------------------------------------
def candidates(kind, shapes, dev, args):
    """name -> fn for one update on one workload, and the compile time."""
    base = Shapes(shapes, dev)
    n = T.numel(shapes)
    if kind == "pso":
        x, v, p, g = base, base.randn() * 0.1, base.randn(), base.randn()
        X, V, P, G = (list(q.parameters()) for q in (x, v, p, g))
        rbuf = torch.empty(2, n, device=dev)
        R1 = [t.view(s) for t, s in zip(rbuf[0].split([math.prod(s) for s in shapes]), shapes)]
        R2 = [t.view(s) for t, s in zip(rbuf[1].split([math.prod(s) for s in shapes]), shapes)]
        step = nyto.fuse(pso)

        def particle():
            nv = W * v + C1 * x.rand() * (p - x) + C2 * x.rand() * (g - x)
            return x + nv, nv

        def foreach():
            torch.rand(2, n, device=dev, out=rbuf)
            t1 = torch._foreach_sub(P, X)
            torch._foreach_mul_(t1, R1)
            t2 = torch._foreach_sub(G, X)
            torch._foreach_mul_(t2, R2)
            torch._foreach_mul_(V, W)
            torch._foreach_add_(V, t1, alpha=C1)
            torch._foreach_add_(V, t2, alpha=C2)
            torch._foreach_add_(X, V)

        def flat_pso(fx, fv, fp, fg):
            r1, r2 = torch.rand_like(fx), torch.rand_like(fx)
            fv.mul_(W).add_(C1 * r1 * (fp - fx)).add_(C2 * r2 * (fg - fx))
            fx.add_(fv)

        comp, ct = (None, math.nan) if args.no_compile else compiled(flat_pso, "pso", [flats(q) for q in (x, v, p, g)])
        ours = lambda: step(x, v, p, g, W, C1, C2, out=(x, v))  # noqa: E731
    elif kind == "ema":
        avg, new = base, base.randn()
        A, N = list(avg.parameters()), list(new.parameters())
        step = nyto.fuse(ema)

        def particle():
            avg.__imul__(D)
            avg.__iadd__((1 - D) * new)

        def foreach():
            torch._foreach_mul_(A, D)
            torch._foreach_add_(A, N, alpha=1 - D)

        def flat_ema(fa, fn):
            fa.copy_(D * fa + (1 - D) * fn)

        comp, ct = (None, math.nan) if args.no_compile else compiled(flat_ema, "ema", [flats(avg), flats(new)])
        ours = lambda: step(avg, new, D, out=avg)  # noqa: E731
    else:
        ms = [base.randn() for _ in range(5)]
        out = base.clone()
        Ms = [list(m.parameters()) for m in ms]
        O = list(out.parameters())
        step = nyto.fuse(soup)

        def particle():
            return ALPHAS[0] * ms[0] + ALPHAS[1] * ms[1] + ALPHAS[2] * ms[2] + ALPHAS[3] * ms[3] + ALPHAS[4] * ms[4]

        def foreach():
            torch._foreach_mul_(O, 0.0)
            for a, M in zip(ALPHAS, Ms):
                torch._foreach_add_(O, M, alpha=a)

        def flat_soup(fo, f1, f2, f3, f4, f5):
            fo.copy_(ALPHAS[0] * f1 + ALPHAS[1] * f2 + ALPHAS[2] * f3 + ALPHAS[3] * f4 + ALPHAS[4] * f5)

        comp, ct = (None, math.nan) if args.no_compile else compiled(flat_soup, "soup", [flats(q) for q in [out] + ms])
        ours = lambda: step(*ms, *ALPHAS, out=out)  # noqa: E731
    fns = {"particle": particle, "foreach": foreach, "compile": comp, "ours": T.probe(ours, f"{kind} ours")}
    return fns, ct


# --- engines (nytorch/_fuse/codegen.py): --engine interp|codegen|both --------
def engine_candidates(fns, ours, engine):
    """With --engine both, time the fused update under each engine in the same compare."""
    if engine != "both":
        return
    from nytorch._fuse import codegen as cg

    def under(name):
        def call():
            prev, cg._ENGINE = cg._ENGINE, name
            try:
                ours()
            finally:
                cg._ENGINE = prev

        return call

    fns["ours interp"] = under("interp")
    fns["ours gen"] = T.probe(under("codegen"), "ours gen")


def engine_report(name, kind, n, m, bw_copy, results):
    if "ours gen" not in m:
        return
    gbs = {k: T.ratio(BYTES[kind] * n, m[k]) / 1e9 for k in ("ours gen", "ours interp", "foreach", "compile")}
    inductor = "n/a" if math.isnan(gbs["compile"]) else f"{gbs['compile']:.0f} GB/s"
    print(
        f"    engines {name}/{kind}: gen {gbs['ours gen']:.0f} GB/s ({gbs['ours gen'] * 1e9 / bw_copy:.0%} of copy), "
        f"interp {gbs['ours interp']:.0f} GB/s, foreach {gbs['foreach']:.0f} GB/s, inductor (flat buffers) "
        f"{inductor}, copy {bw_copy / 1e9:.0f} GB/s; gen/interp {T.fmt_ratio(T.ratio(m['ours interp'], m['ours gen']))}",
        flush=True,
    )
    results.append(dict(workload=name, update=kind, engines_GBps=gbs, copy_GBps=bw_copy / 1e9))


def engine_compile_times(args):
    """First compile (NVRTC, empty cache folder) and cached load (disk) of the PSO program."""
    if args.engine == "interp" or args.device != "cuda":
        return
    import tempfile

    from nytorch._fuse import codegen as cg
    from nytorch._fuse import nvrtc as _nvrtc

    reason = cg.available()
    if reason:
        print(f"  codegen unavailable: {reason}")
        return
    prog = nyto.fuse.program(pso, "ppppnnn")
    with tempfile.TemporaryDirectory() as d:
        os.environ["NYTO_FUSE_CACHE_DIR"] = d
        t0 = time.perf_counter()
        cg.compile_program(prog, torch.float32)
        first = time.perf_counter() - t0
        cg._COMPILED.clear()
        _nvrtc._mem.clear()
        t0 = time.perf_counter()
        cg.compile_program(prog, torch.float32)
        cached = time.perf_counter() - t0
        del os.environ["NYTO_FUSE_CACHE_DIR"]
    print(
        f"  codegen: first compile {first * 1e3:.0f} ms (target < 150), cached load {cached * 1e3:.2f} ms "
        f"(target < 2), NVRTC {_nvrtc.nvrtc().version}"
    )


# --- end engines


def bench_memory(name, shapes, args, rows, results):
    dev = args.device
    n = T.numel(shapes)
    cfg = dict(
        rounds=args.rounds,
        block_s=args.block_s,
        device=dev,
        min_rounds=args.min_rounds,
        slow_s=args.slow_s,
        budget_s=args.budget,
    )
    for kind in ("pso", "ema", "soup"):
        fns, compile_s = candidates(kind, shapes, dev, args)
        probes = T.bandwidth_probes(dev)
        fns["bw add_"] = probes["add_"][0]
        fns["bw copy"] = probes["copy"][0]
        engine_candidates(fns, fns["ours"], args.engine)
        t = T.compare(fns, **cfg)
        del probes
        m = {k: v.median for k, v in t.items()}
        bw = T.ratio(3 * 4 * (64 << 20), m["bw add_"])
        bw_copy = T.ratio(2 * 4 * (64 << 20), m["bw copy"])
        floor = BYTES[kind] * n / bw
        r_floor = T.ratio(m["ours"], floor)
        r_fe = T.ratio(m["foreach"], m["ours"])
        ours_bw = T.ratio(BYTES[kind] * n, m["ours"])
        target, ok = "", None
        if dev == "cuda":
            target = f"ours >= {TGT_GPU_COPY:.0%} of copy GB/s"
            ok = T.check(T.ratio(ours_bw, bw_copy), TGT_GPU_COPY, at_most=False)
        elif name in MEM_BOUND:
            checks = [T.check(r_floor, TGT_FLOOR)]
            target = f"ours/floor<={TGT_FLOOR}"
            if kind == "pso":
                checks.append(T.check(r_fe, TGT_FOREACH, at_most=False))
                target += f", foreach/ours>={TGT_FOREACH:g}"
            ok = None if any(c is None for c in checks) else all(checks)
        rows.append(
            [
                name,
                kind,
                T.us(m["particle"]),
                T.us(m["foreach"]),
                T.us(m["compile"]),
                f"{compile_s:.1f}" if not math.isnan(compile_s) else "n/a",
                T.us(floor),
                T.us(m["ours"]),
                T.fmt_ratio(r_floor),
                T.fmt_ratio(r_fe),
                T.fmt_ratio(T.ratio(m["particle"], m["ours"])),
                T.fmt_ratio(T.ratio(m["compile"], m["ours"])),
                f"{ours_bw / 1e9:.1f}",
                f"{bw / 1e9:.1f}",
                f"{bw_copy / 1e9:.1f}",
                T.worst_spread(t),
                target,
                T.verdict(ok, bool(target)),
            ]
        )
        engine_report(name, kind, n, m, bw_copy, results)
        results.append(
            dict(
                workload=name,
                update=kind,
                numel=n,
                us={k: v * 1e6 for k, v in m.items()},
                min_us=T.mins_us(t),
                floor_us=floor * 1e6,
                compile_s=compile_s,
                add_GBps=bw / 1e9,
                copy_GBps=bw_copy / 1e9,
                ours_GBps=ours_bw / 1e9,
                target=target,
                ok=ok,
            )
        )
        del fns
        print(f"    {name}/{kind} done", flush=True)


def micro_us(fn, calls=2000, rounds=15):
    """Median per-call CPU time (time.thread_time) over rounds of `calls` calls."""
    for _ in range(50):
        fn()
    res = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(calls):
            fn()
        res.append((time.thread_time() - t0) / calls)
    return statistics.median(res) * 1e6


def bench_overhead(args, rows, results):
    """Per-call cost of each fused update on the tiny 2-parameter model, and trace cost."""
    dev = args.device
    shapes = T.workloads()["tiny"]
    base = Shapes(shapes, dev)
    x, v, p, g = base, base.randn(), base.randn(), base.randn()
    ms = [base.randn() for _ in range(5)]
    steps = {"pso": nyto.fuse(pso), "ema": nyto.fuse(ema), "soup": nyto.fuse(soup)}
    calls = {
        "pso": lambda: steps["pso"](x, v, p, g, W, C1, C2, out=(x, v)),
        "ema": lambda: steps["ema"](x, p, D, out=x),
        "soup": lambda: steps["soup"](*ms, *ALPHAS, out=g),
    }
    particle = {
        "pso": lambda: (lambda nv: (x + nv, nv))(W * v + C1 * x.rand() * (p - x) + C2 * x.rand() * (g - x)),
        "ema": lambda: (x.__imul__(D), x.__iadd__((1 - D) * p)),
        "soup": lambda: (
            ALPHAS[0] * ms[0] + ALPHAS[1] * ms[1] + ALPHAS[2] * ms[2] + ALPHAS[3] * ms[3] + ALPHAS[4] * ms[4]
        ),
    }
    kinds = {"pso": "ppppnnn", "ema": "ppn", "soup": "pppppnnnnn"}
    fns = {"pso": pso, "ema": ema, "soup": soup}
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for k in ("pso", "ema", "soup"):
        traces = []
        for _ in range(args.trace_reps):
            t0 = time.perf_counter()
            nyto.fuse.program(fns[k], kinds[k])
            traces.append(time.perf_counter() - t0)
        fresh = nyto.fuse(fns[k])  # first call: trace + run
        t0 = time.perf_counter()
        if k == "pso":
            fresh(x, v, p, g, W, C1, C2, out=(x, v))
        elif k == "ema":
            fresh(x, p, D, out=x)
        else:
            fresh(*ms, *ALPHAS, out=g)
        sync()
        first = time.perf_counter() - t0
        ours = micro_us(lambda: (calls[k](), sync()), calls=args.micro_calls)
        part = micro_us(lambda: (particle[k](), sync()), calls=args.micro_calls)
        trace_ms = statistics.median(traces) * 1e3
        ok = T.check(ours, TGT_CALL_US) if dev == "cpu" else None
        ok_t = T.check(trace_ms, TGT_TRACE_MS)
        rows.append(
            [
                k,
                f"{trace_ms:.3f}",
                f"{first * 1e3:.3f}",
                T.us(part * 1e-6),
                T.us(ours * 1e-6),
                T.fmt_ratio(T.ratio(part, ours)),
                f"trace<{TGT_TRACE_MS:g}ms, call<{TGT_CALL_US:g}us",
                T.verdict(None if ok is None or ok_t is None else (ok and ok_t), True),
            ]
        )
        results.append(
            dict(
                workload="tiny",
                update=k,
                trace_ms=trace_ms,
                first_call_ms=first * 1e3,
                particle_us=part,
                ours_us=ours,
                ok=None if ok is None else (ok and ok_t),
            )
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--only", help="comma-separated workloads (tiny,resnet18,big)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument(
        "--engine",
        choices=["interp", "codegen", "both"],
        help="CUDA fuse engine of 'ours' "
        "(default: NYTO_FUSE_ENGINE or interp); both: also time each engine in the same compare",
    )
    args = ap.parse_args(argv)
    if args.engine in ("interp", "codegen"):
        from nytorch._fuse import codegen

        codegen.set_engine(args.engine)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*force_disable_caches.*")
    if args.device == "cuda" and not (torch.cuda.is_available() and nyto._C.has_cuda()):
        print("bench_fuse: no CUDA device or nytorch built without CUDA kernels")
        return 0
    args.rounds = 15 if args.quick else 41
    args.block_s = 2e-3 if args.quick else 5e-3
    args.budget = 3.0 if args.quick else 12.0
    args.min_rounds = 3
    args.slow_s = 0.5
    args.trace_reps = 5 if args.quick else 21
    args.micro_calls = 500 if args.quick else 2000
    watch = T.Stopwatch()
    torch.manual_seed(0)
    print(
        f"bench_fuse: {T.machine_line(args.device)}; nytorch {nyto.__version__} "
        f"(CPU kernels: {nyto._C.cpu_isa()}, CUDA kernels: {nyto._C.has_cuda()})"
    )
    if T.load_warning():
        print(T.load_warning())
    engine_compile_times(args)
    only = set(args.only.split(",")) if args.only else None
    results: list = []
    with torch.no_grad():
        if not only or "tiny" in only:
            rows: list = []
            bench_overhead(args, rows, results)
            T.print_table(
                ["update", "trace ms", "1st call ms", "particle us", "ours us", "particle/ours", "target", ""],
                rows,
                title="tiny (2 parameters, 11 elements): trace cost and per-call time "
                "(median CPU time per call, time.thread_time)",
            )
        rows = []
        for name, shapes in T.workloads().items():
            if name not in MEM_BOUND or (only and name not in only):
                continue
            print(f"  {name}: {len(shapes)} tensors, {T.numel(shapes):,} elements ... ({watch():.0f}s)", flush=True)
            bench_memory(name, shapes, args, rows, results)
        if rows:
            T.print_table(
                [
                    "workload",
                    "update",
                    "particle us",
                    "foreach us",
                    "compile us",
                    "compile s",
                    "floor us",
                    "ours us",
                    "ours/floor",
                    "foreach/ours",
                    "particle/ours",
                    "compile/ours",
                    "ours GB/s",
                    "add_ GB/s",
                    "copy GB/s",
                    "IQR",
                    "target",
                    "",
                ],
                rows,
                title=f"Fused updates in place ({args.device}, float32, per-call medians)",
            )
            print(
                "floor: bytes needed (PSO 24, EMA 12, soup 24 per element) at the add_ bandwidth of the same "
                "compare; GB/s columns count those bytes."
            )
    T.finish("bench_fuse", results, watch(), args.device, args.json, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
