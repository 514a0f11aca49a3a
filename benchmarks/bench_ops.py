#!/usr/bin/env python
"""Benchmark of the multi-tensor op library (``nytorch.ops`` / ``torch.ops.nytorch``).

For each workload (tiny, MLP, many-small, ResNet-18, big) and op (add,
add_, mul_scalar_, mul_scalar, the PSO velocity update) it compares, in one
process and interleaved (see ``_timing.compare``):

  loop     a per-tensor Python loop of torch ops
  foreach  torch._foreach_* (for PSO: the shortest foreach chain, with addcmul_)
  flat     one torch op on one pre-flattened contiguous buffer (the floor;
           out-of-place ops write a preallocated result, out=);
           for PSO the floor is the memory traffic, 32 bytes/element, at the
           bandwidth of a large in-place add measured in the same compare
  ours     nytorch.ops.*

and prints per-call medians (us), ours/flat and foreach/ours, a PASS/MISS
column for the targets, and a table of the call paths of one 2-tensor op
(torch.ops.nytorch.add_.default vs the wrapper vs nytorch._C.apply).

    python benchmarks/bench_ops.py [--quick] [--device cpu|cuda] [--json out.json]

Exit code is 0 whatever the targets say (they are informational).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing as T  # noqa: E402
import nytorch  # noqa: E402
from nytorch import ops  # noqa: E402

OPCODE = ops.OP_CODE  # the op table (csrc/ops.def, read through nytorch._C.op_table())
W, C1, C2 = 0.7, 1.5, 1.5
PSO_BYTES_PER_ELEM = 32  # the brief's floor; the in-place update moves 6 reads + 1 write = 28

# Targets (informational): (what, limit)
TGT_INPLACE = 1.10  # in-place ops on resnet18/big: ours <= 1.1x the flat op
TGT_PSO_FLOOR = 1.30  # fused PSO on resnet18/big: ours <= 1.3x the memory floor
TGT_PSO_FOREACH = 3.0  # ... and foreach chain / ours >= 3
MEM_BOUND = ("resnet18", "big")


def check_opcodes(device: str) -> None:
    """The op codes of nytorch._C.apply (ops.OP_CODE, from csrc/ops.def) reach the right ops; verify."""
    x = torch.randn(5, device=device)
    y = torch.randn(5, device=device)
    r = nytorch._C.apply(OPCODE["add"], False, ([x], [y]), ())
    assert torch.allclose(r[0], x + y), "op code of add"
    r = nytorch._C.apply(OPCODE["mul_scalar"], False, ([x],), (3.0,))
    assert torch.allclose(r[0], x * 3), "op code of mul_scalar"
    v, p, g, r1, r2 = (torch.randn(5, device=device) for _ in range(5))
    want = W * v + C1 * r1 * (p - x) + C2 * r2 * (g - x)
    nytorch._C.apply(OPCODE["pso_velocity"], True, ([v], [x], [p], [g], [r1], [r2]), (W, C1, C2))
    assert torch.allclose(v, want, atol=1e-5), "op code of pso_velocity"


def make_lists(shapes, k: int, device: str, scale: float = 1.0):
    """k lists of separately allocated tensors (like a model's parameters)."""
    return [[torch.randn(s, device=device) * scale for s in shapes] for _ in range(k)]


def bench_workload(name, shapes, args, results, rows, pso_rows):
    dev = args.device
    n = T.numel(shapes)
    big = n > 5_000_000
    cfg = dict(
        rounds=args.rounds,
        block_s=args.block_s,
        device=dev,
        min_rounds=args.min_rounds,
        slow_s=args.slow_s,
        budget_s=args.budget_big if big else args.budget_small,
    )
    xs, ys = make_lists(shapes, 2, dev)
    ys = [y * 1e-3 for y in ys]
    fx, fy = torch.randn(n, device=dev), torch.randn(n, device=dev) * 1e-3
    fo = torch.empty_like(fx)  # out-of-place floor: flat op into a preallocated result
    s_out, s_in = 0.5, -1.0  # -1: exact, values neither grow nor decay into denormals
    add = torch.add
    cases = {
        "add": {
            "loop": lambda: [add(x, y) for x, y in zip(xs, ys)],
            "foreach": lambda: torch._foreach_add(xs, ys),
            "flat": lambda: add(fx, fy, out=fo),
            "ours": lambda: ops.add(xs, ys),
        },
        "add_": {
            "loop": lambda: [x.add_(y) for x, y in zip(xs, ys)],
            "foreach": lambda: torch._foreach_add_(xs, ys),
            "flat": lambda: fx.add_(fy),
            "ours": lambda: ops.add_(xs, ys),
        },
        "mul_scalar_": {
            "loop": lambda: [x.mul_(s_in) for x in xs],
            "foreach": lambda: torch._foreach_mul_(xs, s_in),
            "flat": lambda: fx.mul_(s_in),
            "ours": lambda: ops.mul_scalar_(xs, s_in),
        },
        "mul_scalar": {
            "loop": lambda: [x * s_out for x in xs],
            "foreach": lambda: torch._foreach_mul(xs, s_out),
            "flat": lambda: torch.mul(fx, s_out, out=fo),
            "ours": lambda: ops.mul_scalar(xs, s_out),
        },
    }
    for op, fns in cases.items():
        fns["ours"] = T.probe(fns["ours"], f"{name}/{op} ours")
        t = T.compare(fns, **cfg)
        m = {k: v.median for k, v in t.items()}
        r_flat = T.ratio(m["ours"], m["flat"])
        ok = None
        target = ""
        if op.endswith("_") and name in MEM_BOUND:
            ok = T.check(r_flat, TGT_INPLACE)
            target = f"ours/flat<={TGT_INPLACE}"
        rows.append(
            [
                name,
                op,
                T.us(m["loop"]),
                T.us(m["foreach"]),
                T.us(m["flat"]),
                T.us(m["ours"]),
                T.fmt_ratio(r_flat),
                T.fmt_ratio(T.ratio(m["foreach"], m["ours"])),
                T.worst_spread(t),
                target,
                T.verdict(ok, bool(target)),
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
                target=target,
                ok=ok,
            )
        )
    del cases, xs, ys, fx, fy, fo

    # PSO velocity: v = w*v + c1*r1*(p - x) + c2*r2*(g - x), in place into v.
    V, X, P, G, R1, R2 = make_lists(shapes, 6, dev)
    R1 = [r.abs_() for r in R1]
    R2 = [r.abs_() for r in R2]
    flat6 = [torch.cat([t.reshape(-1) for t in L]) for L in (V, X, P, G, R1, R2)]

    def pso_loop():
        for v, x, p, g, r1, r2 in zip(V, X, P, G, R1, R2):
            v.mul_(W).addcmul_(r1, p - x, value=C1).addcmul_(r2, g - x, value=C2)

    def pso_foreach():
        t1 = torch._foreach_sub(P, X)
        t2 = torch._foreach_sub(G, X)
        torch._foreach_mul_(V, W)
        torch._foreach_addcmul_(V, R1, t1, value=C1)
        torch._foreach_addcmul_(V, R2, t2, value=C2)

    def pso_flat_chain():  # the same chain on one flat buffer each
        v, x, p, g, r1, r2 = flat6
        v.mul_(W).addcmul_(r1, p - x, value=C1).addcmul_(r2, g - x, value=C2)

    probes = T.bandwidth_probes(dev)
    fns = {
        "loop": None if (args.quick and big) else pso_loop,  # seconds per call: full run only
        "foreach": pso_foreach,
        "flat-chain": None if args.quick else pso_flat_chain,
        "ours": T.probe(lambda: ops.pso_velocity_(V, X, P, G, R1, R2, W, C1, C2), f"{name}/pso ours"),
        "ours-1flat": T.probe(lambda: ops.pso_velocity_(*[[f] for f in flat6], W, C1, C2), f"{name}/pso 1flat"),
        "bw copy": probes["copy"][0],
        "bw add_": probes["add_"][0],
    }
    t = T.compare(fns, **cfg)
    m = {k: v.median for k, v in t.items()}
    bw_copy = probes["copy"][1] / m["bw copy"]
    bw = probes["add_"][1] / m["bw add_"]
    floor = PSO_BYTES_PER_ELEM * n / bw
    r_floor = T.ratio(m["ours"], floor)
    r_fe = T.ratio(m["foreach"], m["ours"])
    ok = None
    target = ""
    if name in MEM_BOUND:
        a, b = T.check(r_floor, TGT_PSO_FLOOR), T.check(r_fe, TGT_PSO_FOREACH, at_most=False)
        ok = None if a is None or b is None else (a and b)
        target = f"ours/floor<={TGT_PSO_FLOOR}, foreach/ours>={TGT_PSO_FOREACH:g}"
    rows.append(
        [
            name,
            "pso_velocity_",
            T.us(m["loop"]),
            T.us(m["foreach"]),
            T.us(floor) + "*",
            T.us(m["ours"]),
            T.fmt_ratio(r_floor),
            T.fmt_ratio(r_fe),
            T.worst_spread(t),
            target,
            T.verdict(ok, bool(target)),
        ]
    )
    pso_rows.append(
        [
            name,
            f"{bw_copy / 1e9:.1f}",
            f"{bw / 1e9:.1f}",
            T.us(floor),
            T.us(m["flat-chain"]),
            T.us(m["ours-1flat"]),
            T.us(m["ours"]),
            T.fmt_ratio(T.ratio(m["ours"], m["ours-1flat"])),
        ]
    )
    results.append(
        dict(
            workload=name,
            op="pso_velocity_",
            tensors=len(shapes),
            numel=n,
            us={**{k: v * 1e6 for k, v in m.items()}, "mem_floor": floor * 1e6},
            min_us=T.mins_us(t),
            bandwidth_GBps=bw / 1e9,
            copy_GBps=bw_copy / 1e9,
            target=target,
            ok=ok,
        )
    )


def bench_call_paths(args, results):
    """Per-call cost of the ways to call one 2-tensor op (what the hot path should use)."""
    dev = args.device
    xs = [torch.randn(10, 1, device=dev), torch.randn(1, device=dev)]
    ys = [torch.randn(10, 1, device=dev) * 1e-3, torch.randn(1, device=dev) * 1e-3]
    nt = torch.ops.nytorch
    C = nytorch._C
    a = OPCODE["add"]
    fns = {
        "torch._foreach_add_(xs, ys)": lambda: torch._foreach_add_(xs, ys),
        "torch.ops.nytorch.add_.default": lambda: nt.add_.default(xs, ys),
        "torch.ops.nytorch.add_ (packet)": lambda: nt.add_(xs, ys),
        "nytorch.ops.add_ (wrapper)": lambda: ops.add_(xs, ys),
        "nytorch._C.apply(add, True)": lambda: C.apply(a, True, (xs, ys), ()),
        "torch._foreach_add(xs, ys)": lambda: torch._foreach_add(xs, ys),
        "torch.ops.nytorch.add.default": lambda: nt.add.default(xs, ys),
        "nytorch.ops.add (wrapper)": lambda: ops.add(xs, ys),
        "nytorch._C.apply(add, False)": lambda: C.apply(a, False, (xs, ys), ()),
    }
    fns = {k: T.probe(f, k) for k, f in fns.items()}
    t = T.compare(fns, rounds=args.rounds_paths, block_s=2e-4, device=dev)
    m = {k: v.median for k, v in t.items()}
    ref_in, ref_out = m["torch._foreach_add_(xs, ys)"], m["torch._foreach_add(xs, ys)"]
    rows = []
    for k, v in m.items():
        inplace = "_(" in k or "add_" in k or "True" in k
        ref = ref_in if inplace else ref_out
        ok = None
        if k == "nytorch.ops.add_ (wrapper)":
            ok = T.check(v, ref_in)
        rows.append(
            [
                k,
                "in-place" if inplace else "out-of-place",
                T.us(v),
                T.fmt_ratio(T.ratio(v, ref)),
                f"{t[k].spread:.0%}" if t[k].samples else "",
                "<= _foreach_add_" if k == "nytorch.ops.add_ (wrapper)" else "",
                T.verdict(ok, k == "nytorch.ops.add_ (wrapper)"),
            ]
        )
        results.append(dict(workload="tiny", op="call-path", path=k, us=v * 1e6, ok=ok))
    T.print_table(
        ["call (2 tensors: [10,1], [1])", "kind", "us/call", "vs foreach", "IQR", "target", ""],
        rows,
        title="Call paths of one 2-tensor add (per-call overhead)",
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (whole run under ~1 minute)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--only", help="comma-separated workloads to run (tiny,mlp,many-small,resnet18,big)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, the core count)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Many short blocks: a median over them shrugs off preemption by other load.
    args.rounds = 31 if args.quick else 101
    args.rounds_paths = 100 if args.quick else 400
    args.block_s = 2e-4 if args.quick else 3e-4
    args.budget_small = 0.3 if args.quick else 1.5  # seconds of measured rounds per compare
    args.budget_big = 1.5 if args.quick else 6.0
    args.min_rounds = 2 if args.quick else 3
    args.slow_s = 0.2 if args.quick else 1.0  # calls slower than this may get just 2 rounds
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    watch = T.Stopwatch()
    torch.manual_seed(0)
    check_opcodes(args.device)
    print(
        f"bench_ops: {T.machine_line(args.device)}; nytorch {nytorch.__version__} "
        f"(CPU kernels: {nytorch._C.cpu_isa()}, CUDA kernels: {nytorch._C.has_cuda()})"
    )
    if T.load_warning():
        print(T.load_warning())
    print(
        "medians over interleaved rounds; ratios from the same rounds; IQR = spread of the noisiest\n"
        "column (its full range where it has < 4 rounds)"
    )
    results: list = []
    with torch.no_grad():
        bench_call_paths(args, results)
        rows, pso_rows = [], []
        wl = T.workloads(args.quick)
        only = set(args.only.split(",")) if args.only else None
        for name, shapes in wl.items():
            if only and name not in only:
                continue
            print(f"  {name}: {len(shapes)} tensors, {T.numel(shapes):,} elements ... ({watch():.0f}s)", flush=True)
            bench_workload(name, shapes, args, results, rows, pso_rows)
    T.print_table(
        [
            "workload",
            "op",
            "loop us",
            "foreach us",
            "flat us",
            "ours us",
            "ours/flat",
            "foreach/ours",
            "IQR",
            "target",
            "",
        ],
        rows,
        title="Multi-tensor ops (float32, per-call medians)",
    )
    print(
        "* PSO 'flat' is the memory floor: 32 bytes/element at the bandwidth of a 256 MiB a.add_(b)\n"
        "  (12 bytes/element) measured in the same row; copy_ GB/s is shown for reference (it\n"
        "  understates the traffic: write-allocate reads the destination too)."
        + (" --quick: no PSO loop on resnet18/big." if args.quick else "")
    )
    T.print_table(
        [
            "workload",
            "copy GB/s",
            "add_ GB/s",
            "mem floor us",
            "flat chain us",
            "ours 1-flat us",
            "ours us",
            "ours/1-flat",
        ],
        pso_rows,
        title="PSO velocity detail (flat chain: torch ops on one flat buffer; 1-flat: our kernel on one tensor)",
    )
    T.finish("bench_ops", results, watch(), args.device, args.json, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
