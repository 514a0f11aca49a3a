#!/usr/bin/env python
"""all_reduce (mean) of a ResNet-18-sized particle (62 tensors, 11.7M float32
parameters) over gloo, 2 processes on 127.0.0.1.

Candidates, each leaving the mean of both ranks in the model's parameters:

  ours     nytorch.distributed.all_reduce_(net): one collective per bucket of
           the particle's flat buffer (default 16 MiB: 3 messages), each
           divided by world as soon as it arrived
  loop     for p in parameters: dist.all_reduce(p); p /= world   (62 collectives)
  p2v      parameters_to_vector -> one dist.all_reduce -> /world -> vector_to_parameters
  flat mean  dist.all_reduce of one preallocated 11.7M buffer, then /world (the floor of a mean)
  flat sum   the same without the division (the floor of the collective alone)

The two ranks run the candidates in lockstep: every round times a block of
``--calls`` calls of each candidate, in a rotating order; a block's time is
the slower rank's (a MAX all-reduce of the two block times). The table shows
the median per-call time over the rounds, the spread (IQR / median) and each
candidate's time relative to ours. ``--buckets`` adds ours with other bucket
sizes (the data behind the default).

    python benchmarks/bench_distributed.py [--quick] [--buckets] [--threads 1] [--json out.json]

Both processes share this machine's cores; the header prints the load average.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import socket
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing as T  # noqa: E402

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_particle(shapes, seed: int):
    import nytorch as nyto
    from torch import nn

    class Shaped(nyto.NytoModule):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.ps = nn.ParameterList([nn.Parameter(torch.randn(s, generator=g)) for s in shapes])

    return Shaped()


def candidates(net, world: int, bucket_sizes: List[int]) -> Dict[str, Callable[[], object]]:
    import nytorch.distributed as nd
    import torch.distributed as dist
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    params = list(net.parameters())
    floor_buf = torch.randn(sum(p.numel() for p in params))

    def loop() -> None:
        with torch.no_grad():
            for p in params:
                dist.all_reduce(p.data)
                p.data.div_(world)

    def p2v() -> None:
        with torch.no_grad():
            vec = parameters_to_vector(params)
            dist.all_reduce(vec)
            vec.div_(world)
            vector_to_parameters(vec, params)

    fns: Dict[str, Callable[[], object]] = {
        "ours": lambda: nd.all_reduce_(net),
        "loop": loop,
        "p2v": p2v,
        "flat mean": lambda: (dist.all_reduce(floor_buf), floor_buf.div_(world)),
        "flat sum": lambda: dist.all_reduce(floor_buf),
    }
    for b in bucket_sizes:
        fns[f"ours b={b >> 20}MiB"] = lambda b=b: nd.all_reduce_(net, bucket_bytes=b)
    return fns


def check_equal(net, world: int, rank: int) -> str:
    """ours, loop and p2v give the same mean (bitwise: 2 ranks, one sum each)."""
    import nytorch.distributed as nd
    from torch.nn.utils import parameters_to_vector

    results = {}
    for name in ("ours", "loop", "p2v"):
        c = net.clone()
        fn = candidates(c, world, [])[name]
        fn()
        results[name] = parameters_to_vector(c.parameters()).detach()
    same = all(torch.equal(results["ours"], v) for v in results.values())
    nd.barrier()
    return "bitwise equal" if same else "DIFFERENT"


def worker(rank: int, port: int, args: argparse.Namespace, queue) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(args.threads)
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )
    net = make_particle(T.resnet18_shapes(), seed=rank)
    equal = check_equal(net, WORLD, rank)
    buckets = [1 << 20, 4 << 20, 8 << 20, 32 << 20, 64 << 20] if args.buckets else []
    fns = candidates(net, WORLD, buckets)
    for fn in fns.values():  # warm up (first touches, connections)
        fn()
    names = list(fns)
    samples: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        shift = r % len(names)
        for k in names[shift:] + names[:shift]:
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fns[k]()
            t = torch.tensor([(time.perf_counter() - t0) / args.calls], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            samples[k].append(t.item())
    if rank == 0:
        queue.put({"samples": samples, "equal": equal, "machine": T.machine_line("cpu")})
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (~20 s)")
    ap.add_argument("--buckets", action="store_true", help="also time ours with 1-64 MiB buckets")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--calls", type=int, default=3, help="calls per timed block")
    ap.add_argument("--json", help="write the samples here")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 5 if args.quick else 15
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=worker, args=(r, port, args, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    res = queue.get(timeout=1800)
    for p in procs:
        p.join(60)
    samples = res["samples"]
    shapes = T.resnet18_shapes()
    n = T.numel(shapes)
    print(
        f"nytorch.distributed all_reduce_ benchmark: {len(shapes)} tensors, {n:,} float32 params "
        f"({n * 4 / 1e6:.1f} MB), gloo, {WORLD} processes on 127.0.0.1, {args.threads} torch thread(s) each"
    )
    print(res["machine"])
    warn = T.load_warning()
    if warn:
        print(warn)
    print(
        f"results of ours / loop / p2v: {res['equal']}; {args.rounds} rounds x {args.calls} calls; "
        "NCCL: no multi-GPU machine here, same code path (one collective per bucket)"
    )
    ours = statistics.median(samples["ours"])
    rows = []
    for k, v in samples.items():
        med = statistics.median(v)
        q = statistics.quantiles(v, n=4) if len(v) >= 4 else (min(v), 0, max(v))
        rows.append(
            [
                k,
                "",
                f"{med * 1e3:.2f}",
                f"{(q[2] - q[0]) / med:.0%}",
                T.fmt_ratio(med / ours),
                f"{n * 4 / med / 1e9:.2f}",
            ]
        )
    T.print_table(
        ["candidate", "", "median ms", "IQR", "vs ours", "GB/s (model bytes)"],
        rows,
        title="all_reduce mean of a ResNet-18-sized particle",
    )
    print(f"total {time.perf_counter() - t0:.0f} s")
    T.write_json(args.json, {"samples": samples, "machine": res["machine"], "args": vars(args)})


if __name__ == "__main__":
    main()
