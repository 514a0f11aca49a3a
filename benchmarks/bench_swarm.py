#!/usr/bin/env python
"""Benchmark of one PSO step (update + evaluation) on a swarm of MLPs.

Workloads (float32): ``mlp83k x32`` (32 particles of a 784-104-10 MLP,
82,690 parameters, batch 256) and ``mlp2k x1024`` (1024 particles of a
2-layer 32-48-10 MLP, 2,074 parameters, batch 64). The fitness is the
cross-entropy on one fixed batch. Candidates, measured in one process,
interleaved (``_timing.compare``):

  swarm       nytorch.Swarm + nytorch.algorithms.PSO: ``pso.step(fitness)``,
              the fitness one vmapped forward of all particles (``swarm(x)``)
  swarm upd   the update alone (``pso.tell(fitness)`` with fixed fitness; the
              default backend: one nytorch.fuse pass with in-kernel random numbers)
  upd ops     the same with ``backend="ops"`` (ops.uniform_ + ops.pso_velocity_ + add_)
  swarm eval  the evaluation alone (``swarm(x)`` + loss)
  graph       CUDA only: the same step with ``PSO(..., cuda_graph=True)``, one
              CUDA graph replay per step (fitness, bests, fused update);
              'eager/graph' is 'swarm' over it (issue 13 target: >= 5x).
              n/a on the CPU, or when the capture fails (the reason is printed)
  1.1.0       a Python list of nytorch 1.1.0 particles: particle arithmetic
              per particle, a forward per particle
  tensordict  parameters stacked in a tensordict (``TensorDict.from_modules``),
              update with ``torch._foreach_*`` on its leaves, evaluation with
              ``torch.vmap`` over ``params.to_module(net)`` (tensordict is
              installed into ``benchmarks/.tensordict`` with pip --target when
              missing; if that fails the column is plain stacked tensors
              with the same foreach update and ``functional_call``, marked *)
  EvoTorch    n/a: EvoTorch has no particle swarm optimizer
  floor       the update's memory floor: 5 arrays of N x numel (read x, v,
              pbest; write x, v) at the bandwidth of a large flat ``a.add_(b)``
              measured in the same run (random numbers generated in the kernel,
              personal-best copies not counted)

    python benchmarks/bench_swarm.py [--quick] [--device cpu|cuda] [--threads N] [--json out.json]
                                     [--no-110] [--no-tensordict]

On a machine without network, carry benchmarks/.tensordict and
benchmarks/.nytorch110 along (both are git-ignored install targets).

Targets (informational): swarm update within 1.3x of the floor; on CUDA the
graphed step at least 5x faster than the eager one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _timing as T  # noqa: E402
import nytorch as nyto  # noqa: E402
from nytorch.algorithms import PSO  # noqa: E402

TD_DIR = os.path.join(HERE, ".tensordict")
W, C1, C2 = 0.7, 1.5, 1.5
TGT_FLOOR = 1.3
TGT_GRAPH = 5.0

WORKLOADS = {
    "mlp83k x32": dict(n=32, sizes=(784, 104, 10), batch=256),
    "mlp2k x1024": dict(n=1024, sizes=(32, 48, 10), batch=64),
}


def mlp(sizes):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def net_class(base):
    class Net(base):
        def __init__(self, sizes):
            super().__init__()
            self.body = mlp(sizes)

        def forward(self, x):
            return self.body(x)

    return Net


def load_tensordict():
    """tensordict from benchmarks/.tensordict (installing it there if missing), or None."""
    if not os.path.isdir(os.path.join(TD_DIR, "tensordict")):
        print(f"tensordict not found in {TD_DIR}: installing it there (pip install --no-deps --target ...)", flush=True)
        try:
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--retries",
                    "0",
                    "--timeout",
                    "15",
                    "--target",
                    TD_DIR,
                    "tensordict",
                    "pyvers<0.3,>=0.2",
                    "cloudpickle",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            print("  pip timed out (no network?): emulating tensordict")
            return None
        if r.returncode:
            print(f"  could not install tensordict ({r.stderr.strip().splitlines()[-1:]}): emulating it")
            return None
    sys.path.insert(0, TD_DIR)
    try:
        import tensordict

        return tensordict
    except Exception as e:  # noqa: BLE001
        print(f"  tensordict does not import ({type(e).__name__}: {e}): emulating it")
        return None
    finally:
        sys.path.remove(TD_DIR)


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-particle cross-entropy of [N, B, C] logits: [N]."""
    logp = logits.log_softmax(-1)
    return -logp.gather(-1, y.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(1)


# ---------------------------------------------------------------------------
# candidates
def swarm_cases(cfg, x, y, device):
    Net = net_class(nyto.NytoModule)
    torch.manual_seed(0)
    net = Net(cfg["sizes"]).to(device)
    swarm = nyto.Swarm(net, cfg["n"], init="perturb", scale=0.1)
    pso = PSO(swarm, inertia=W, cognitive=C1, social=C2, seed=0, track_diversity=False)
    fitness = lambda s: ce(s(x), y)  # noqa: E731
    pso.step(fitness)
    fixed = fitness(swarm)
    upd = lambda: pso.tell(fixed)  # noqa: E731
    ops_swarm = swarm.clone()
    pso_ops = PSO(ops_swarm, inertia=W, cognitive=C1, social=C2, seed=0, track_diversity=False, backend="ops")
    pso_ops.tell(fixed)
    fns = {
        "swarm": lambda: pso.step(fitness),
        "swarm upd": upd,
        "upd ops": lambda: pso_ops.tell(fixed),
        "swarm eval": lambda: fitness(swarm),
    }
    graph = graph_case(swarm, x, y, device)
    if graph is not None:
        fns["swarm graph"] = graph
    return swarm, fns, pso.backend


def graph_case(swarm, x, y, device):
    """``PSO(cuda_graph=True).step`` on a copy of the swarm (captured here), or None."""
    if device != "cuda":
        return None
    gpso = PSO(swarm.clone(), inertia=W, cognitive=C1, social=C2, seed=0, track_diversity=False, cuda_graph=True)
    fitness = lambda s: ce(s(x), y)  # noqa: E731  (one function object: the graph is keyed by it)
    try:
        gpso.step(fitness)  # warm-up and capture
        gpso.step(fitness)  # a replay
    except Exception as e:  # noqa: BLE001
        print(f"graph: n/a ({type(e).__name__}: {e})")
        return None
    return lambda: gpso.step(fitness)


def v110_cases(v110, cfg, x, y, device):
    if v110 is None:
        return None
    Net = net_class(v110.NytoModule)
    torch.manual_seed(0)
    base = Net(cfg["sizes"]).to(device)
    xs = [base + base.randn() * 0.1 for _ in range(cfg["n"])]
    vs = [p * 0.0 for p in xs]
    ps = [p.clone() for p in xs]
    pf = [float("inf")] * cfg["n"]
    st = {"g": xs[0].clone(), "gf": float("inf")}

    def step():
        with torch.no_grad():
            f = [float(F.cross_entropy(p(x), y)) for p in xs]
        for i, fi in enumerate(f):
            if fi < pf[i]:
                pf[i], ps[i] = fi, xs[i].clone()
                if fi < st["gf"]:
                    st["gf"], st["g"] = fi, xs[i].clone()
        g = st["g"]
        for i in range(len(xs)):
            x_, r1, r2 = xs[i], xs[i].rand(), xs[i].rand()
            vs[i] = W * vs[i] + C1 * r1 * (ps[i] - x_) + C2 * r2 * (g - x_)
            xs[i] = x_ + vs[i]

    return step


def td_cases(tensordict, cfg, x, y, device):
    """PSO on stacked parameters with torch._foreach_* (tensordict or plain stacked tensors)."""
    torch.manual_seed(0)
    nets = [mlp(cfg["sizes"]).to(device) for _ in range(cfg["n"])]
    base = mlp(cfg["sizes"]).to("meta")
    if tensordict is not None:
        params = tensordict.TensorDict.from_modules(*nets, as_module=True)
        names = list(params.keys(include_nested=True, leaves_only=True))
        X = [params.get(k).data for k in names]

        def call(p, xx):
            with p.to_module(base):
                return base(xx)

        evaluate = lambda: ce(torch.vmap(call, (0, None))(params, x), y)  # noqa: E731
    else:
        names = [k for k, _ in nets[0].named_parameters()]
        X = [torch.stack([dict(m.named_parameters())[k].detach() for m in nets]) for k in names]
        evaluate = lambda: ce(
            torch.vmap(
                lambda p, xx: functional_call(  # noqa: E731
                    base, dict(zip(names, p)), (xx,)
                ),
                (0, None),
            )(tuple(X), x),
            y,
        )
    V = [torch.zeros_like(t) for t in X]
    P = [t.clone() for t in X]
    G = [t[0].clone() for t in X]
    pf = torch.full((cfg["n"],), float("inf"), device=device)
    st = {"gf": torch.tensor(float("inf"), device=device)}

    def step():
        with torch.no_grad():
            f = evaluate()
            better = f < pf
            idx = better.nonzero().squeeze(1)
            for p, t in zip(P, X):
                p.index_copy_(0, idx, t.index_select(0, idx))
            pf.copy_(torch.where(better, f, pf))
            i = torch.argmin(pf)
            if pf[i] < st["gf"]:
                st["gf"] = pf[i].clone()
                for g, p in zip(G, P):
                    g.copy_(p[i])
            R1 = [torch.rand_like(t) for t in X]
            R2 = [torch.rand_like(t) for t in X]
            d1 = torch._foreach_sub(P, X)
            d2 = torch._foreach_sub([g.expand_as(t) for g, t in zip(G, X)], X)
            torch._foreach_mul_(V, W)
            torch._foreach_addcmul_(V, R1, d1, value=C1)
            torch._foreach_addcmul_(V, R2, d2, value=C2)
            torch._foreach_add_(X, V)

    step()
    return step, tensordict is not None


def floor_bandwidth(device, numel: int) -> float:
    """Bytes per second of ``a.add_(b)`` on two flat float32 buffers (3 arrays moved)."""
    n = max(numel, 16 << 20)
    a = torch.randn(n, device=device)
    b = torch.randn(n, device=device)
    t = T.compare({"add_": lambda: a.add_(b, alpha=1e-9)}, rounds=7, block_s=0.02, device=device)["add_"]
    return 3 * n * 4 / t.median


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-110", action="store_true", help="skip the nytorch 1.1.0 column")
    ap.add_argument("--no-tensordict", action="store_true", help="emulate tensordict with plain stacked tensors")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 0
    load = os.getloadavg()[0]
    print(
        f"nytorch {nyto.__version__}, torch {torch.__version__}, device {device}, "
        f"{torch.get_num_threads()} threads, load average {load:.1f} on {os.cpu_count()} cores"
        + ("  (noisy)" if load > (os.cpu_count() or 1) else "")
    )
    v110 = None
    if not args.no_110:
        try:
            from bench_particles import load_nytorch110

            v110 = load_nytorch110()
        except Exception as e:  # noqa: BLE001
            print(f"nytorch 1.1.0 unavailable ({type(e).__name__}: {e}): column n/a")
    tensordict = None if args.no_tensordict else load_tensordict()
    rounds = 3 if args.quick else 7
    results = {}
    for name, cfg in WORKLOADS.items():
        torch.manual_seed(1)
        x = torch.randn(cfg["batch"], cfg["sizes"][0], device=device)
        y = torch.randint(0, cfg["sizes"][-1], (cfg["batch"],), device=device)
        swarm, fns, backend = swarm_cases(cfg, x, y, device)
        fns["1.1.0"] = v110_cases(v110, cfg, x, y, device)
        td_step, real_td = td_cases(tensordict, cfg, x, y, device)
        fns["tensordict"] = td_step
        numel = swarm.numel
        bw = floor_bandwidth(device, cfg["n"] * numel)
        floor_s = 5 * cfg["n"] * numel * 4 / bw
        timings = T.compare(
            fns,
            rounds=rounds,
            block_s=0.05 if args.quick else 0.2,
            device=device,
            budget_s=10 if args.quick else 40,
            min_rounds=2,
        )
        ms = {k: t.median * 1e3 for k, t in timings.items()}
        results[name] = dict(
            ms=ms,
            floor_ms=floor_s * 1e3,
            backend=backend,
            bandwidth_gbs=bw / 1e9,
            numel=numel,
            n=cfg["n"],
            tensordict_real=real_td,
            spread=T.worst_spread(timings),
        )
    print()
    hdr = (
        f"{'workload':13} {'swarm':>9} {'upd':>8} {'upd ops':>8} {'eval':>8} {'1.1.0':>10} {'tensordict':>11} "
        f"{'EvoTorch':>9} {'floor':>8} {'upd/floor':>10} {'vs 1.1.0':>9} {'vs td':>7} {'graph':>8} {'eager/graph':>12}"
    )
    print(
        "ms per PSO step (update + evaluation), median; 'upd'/'eval' are the swarm's parts "
        f"('upd': backend {results[next(iter(results))]['backend']!r}; 'upd ops': backend 'ops')"
    )
    print(hdr)
    for name, r in results.items():
        ms = r["ms"]
        ratio = ms["swarm upd"] / r["floor_ms"]
        td = f"{ms['tensordict']:.2f}" + ("" if r["tensordict_real"] else "*")
        g = ms.get("swarm graph")
        graph = f"{g:8.3f} {ms['swarm'] / g:11.1f}x" if g else f"{'n/a':>8} {'n/a':>12}"
        verdicts = [f"{'PASS' if ratio <= TGT_FLOOR else 'MISS'} upd <= {TGT_FLOOR}x floor"]
        if g:
            verdicts.append(f"{'PASS' if ms['swarm'] / g >= TGT_GRAPH else 'MISS'} graph >= {TGT_GRAPH}x faster")
        print(
            f"{name:13} {ms['swarm']:9.2f} {ms['swarm upd']:8.2f} {ms['upd ops']:8.2f} {ms['swarm eval']:8.2f} "
            f"{ms.get('1.1.0', float('nan')):10.1f} {td:>11} {'n/a':>9} {r['floor_ms']:8.2f} "
            f"{ratio:9.2f}x {ms.get('1.1.0', float('nan')) / ms['swarm']:8.1f}x "
            f"{ms['tensordict'] / ms['swarm']:6.2f}x {graph}  [{'; '.join(verdicts)}; IQR {r['spread']}]"
        )
    bw = [r["bandwidth_gbs"] for r in results.values()]
    print(f"floor: 5 x N x numel x 4 bytes at the flat add_ bandwidth ({', '.join(f'{b:.1f}' for b in bw)} GB/s)")
    if not all(r["tensordict_real"] for r in results.values()):
        print("* tensordict unavailable: plain stacked tensors with the same foreach update")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device, load=load, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
