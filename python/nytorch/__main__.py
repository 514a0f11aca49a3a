"""``python -m nytorch``: particle operations in a few seconds, timed against ``torch._foreach_*``."""

import os
import statistics
import time
from typing import Any

import torch
from torch import nn

import nytorch
from nytorch import _C, ops

DEVICE = "cuda" if torch.cuda.is_available() and _C.has_cuda() else "cpu"


class Particle(nytorch.NytoModule):
    """A whole network as one particle."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body: Any = body  # a Sequential in the demo: indexed below

    def forward(self, x):
        return self.body(x)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))


def resnetish() -> nn.Module:
    """About the parameters of a ResNet-18 (11.5M in 53 tensors); only its parameters are used."""
    layers, cin = [nn.Conv2d(3, 64, 7, bias=False), nn.BatchNorm2d(64)], 64
    for c in (64, 128, 256, 512):
        for _ in range(4):
            layers += [nn.Conv2d(cin, c, 3, bias=False), nn.BatchNorm2d(c)]
            cin = c
    return nn.Sequential(*layers, nn.Linear(512, 1000))


def median_us(fn, budget_s: float = 0.03, max_reps: int = 300) -> float:
    """Median wall time of ``fn()`` in microseconds: one warm-up call, then calls for
    ``budget_s`` (at least 3 of them, unless they take over 10x the budget)."""
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    fn()
    sync()
    times: list = []
    stop = time.perf_counter() + budget_s
    while len(times) < max_reps and (time.perf_counter() < stop or (len(times) < 3 and sum(times) < 10 * budget_s)):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def show_ops() -> None:
    torch.manual_seed(0)
    net = Particle(mlp()).to(DEVICE)
    first = lambda m: [round(v, 3) for v in m.body[0].weight[0, :3].tolist()]  # noqa: E731
    n = sum(p.numel() for p in net.parameters())
    print(f"A small MLP: {n:,} parameters in {len(list(net.parameters()))} tensors. First weight row, first 3 values:")
    print(f"  {'net':32} {first(net)}")
    print(f"  {'net + 10':32} {first(net + 10)}")
    print(f"  {'2 * net':32} {first(2 * net)}")
    other = net + net.randn()
    print(f"  {'other = net + net.randn()':32} {first(other)}")
    w0 = net.body[0].weight
    net += 0.5 * (other - net)
    print(f"  {'net += 0.5 * (other - net)':32} {first(net)}  (same Parameter objects: {net.body[0].weight is w0})")
    print("The same on the op library (nytorch.ops, lists of tensors):")
    ps = list(Particle(mlp()).to(DEVICE).parameters())
    head = lambda xs: [round(v, 3) for v in xs[0][0, :3].tolist()]  # noqa: E731
    with torch.no_grad():
        print(f"  {'ps':32} {head(ps)}")
        print(f"  {'ops.add_scalar(ps, 10)':32} {head(ops.add_scalar(ps, 10))}")
        print(f"  {'ops.mul_scalar(ps, 2)':32} {head(ops.mul_scalar(ps, 2))}")
        qs = ops.add(ps, ops.normal(ps))
        print(f"  {'qs = ops.add(ps, ops.normal(ps))':32} {head(qs)}")
        ops.lerp_(ps, qs, 0.5)  # ps += 0.5 * (qs - ps)
        print(f"  {'ops.lerp_(ps, qs, 0.5)':32} {head(ps)}")


def pso_foreach(v, x, p, g, r1, r2, w, c1, c2):
    """The shortest foreach chain for v = w*v + c1*r1*(p - x) + c2*r2*(g - x)."""
    d1, d2 = torch._foreach_sub(p, x), torch._foreach_sub(g, x)
    torch._foreach_mul_(v, w)
    torch._foreach_addcmul_(v, r1, d1, value=c1)
    torch._foreach_addcmul_(v, r2, d2, value=c2)


def time_model(name: str, make) -> None:
    torch.manual_seed(0)
    a = Particle(make()).to(DEVICE)
    b, v, r1, r2, g = (a.randn() for _ in range(5))
    A, B, V, R1, R2, G = ([p.detach() for p in m.parameters()] for m in (a, b, v, r1, r2, g))
    n = sum(p.numel() for p in A)
    rows = [  # label, torch._foreach_*, nytorch.ops, particle (or None)
        ("a + b", lambda: torch._foreach_add(A, B), lambda: ops.add(A, B), lambda: a + b),
        ("a += b", lambda: torch._foreach_add_(A, B), lambda: ops.add_(A, B), lambda: a.__iadd__(b)),
        ("a * 2", lambda: torch._foreach_mul(A, 2.0), lambda: ops.mul_scalar(A, 2.0), lambda: a * 2),
        (
            "a += 0.5 * (b - a)",
            lambda: torch._foreach_lerp_(A, B, 0.5),
            lambda: ops.lerp_(A, B, 0.5),
            lambda: a.__iadd__(0.5 * (b - a)),
        ),
        (
            "PSO velocity (in place)",
            lambda: pso_foreach(V, A, B, G, R1, R2, 0.7, 1.5, 1.5),
            lambda: ops.pso_velocity_(V, A, B, G, R1, R2, 0.7, 1.5, 1.5),
            lambda: 0.7 * v + 1.5 * r1 * (b - a) + 1.5 * r2 * (g - a),
        ),
    ]
    print(f"\n{name}: {n:,} parameters in {len(A)} tensors ({DEVICE}), median us per call")
    print(f"  {'op':25} {'_foreach':>10} {'nytorch.ops':>12} {'speedup':>8} {'particle':>10}")
    with torch.no_grad():
        for label, ref, ours, particle in rows:
            t_ref, t_ours = median_us(ref), median_us(ours)
            print(f"  {label:25} {t_ref:10.1f} {t_ours:12.1f} {t_ref / t_ours:7.2f}x {median_us(particle):10.1f}")


class DigitsMLP(nytorch.NytoModule):
    """64 -> 16 -> 10 classifier of scikit-learn's 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


def pso_digits(n: int = 32, steps: int = 150) -> None:
    """A short PSO run: a Swarm of MLPs trained on scikit-learn's digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("\nPSO on digits: skipped (scikit-learn is not installed: pip install -r requirements.txt)")
        return
    from nytorch.algorithms import PSO

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32, device=DEVICE) / 16
    y = torch.tensor(d.target, device=DEVICE)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    tr, te = perm[:1350], perm[1350:]
    torch.manual_seed(0)
    swarm = nytorch.Swarm(DigitsMLP().to(DEVICE), n, init=lambda i: DigitsMLP())

    def loss(s):  # every particle's forward at once: [n, 1350, 10] logits -> [n] losses
        logp = s(x[tr]).log_softmax(-1)
        return -logp.gather(-1, y[tr].expand(len(s), -1).unsqueeze(-1)).mean((1, 2))

    print(
        f"\nPSO on scikit-learn's digits: {n} particles x {swarm.numel:,} parameters, {steps} steps "
        f"(a nytorch.Swarm; update fused with nytorch.fuse)"
    )
    pso = PSO(swarm, inertia=lambda t: 0.9 - 0.5 * t / steps, vmax=0.5, seed=0)
    t0 = time.perf_counter()
    pso.run(loss, steps, desc="PSO")
    secs = time.perf_counter() - t0
    with torch.no_grad():
        acc = (pso.best(x[te]).argmax(-1) == y[te]).float().mean().item()
    print(
        f"  best train loss {pso.best_fitness:.3f}, test accuracy {acc:.1%} "
        f"({secs:.1f} s, {secs / steps * 1e3:.1f} ms/step, {pso.backend} update)"
    )


def main() -> None:
    print(
        f"nytorch {nytorch.__version__}, torch {torch.__version__}, CPU kernels {_C.cpu_isa()}, "
        f"{torch.get_num_threads()} threads, device {DEVICE}"
    )
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        print(f"(load average {load:.1f} on {cores} cores: the timings below are noisy)")
    print()
    show_ops()
    time_model("Small MLP", mlp)
    time_model("ResNet-18-sized", resnetish)
    print(
        "\n('particle' is the operator on NytoModules, e.g. `a + b`, including module overhead;"
        " its PSO row is out of place.)"
    )
    pso_digits()


if __name__ == "__main__":
    main()
