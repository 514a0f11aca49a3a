#!/usr/bin/env python
"""Particle ops on CUDA: per-call medians (CUDA events) against the flat op and
torch._foreach_*, on a ResNet-18-sized model, plus host-side latency of a tiny
model. Used by tools/gpu-check.sh on a GPU machine; prints a table."""

import statistics
import time

import nytorch as nyto
import torch

RESNET18 = (
    [(64, 3, 7, 7)]
    + [(64, 64, 3, 3)] * 4
    + [(128, 64, 3, 3), (128, 128, 3, 3), (128, 64, 1, 1)]
    + [(128, 128, 3, 3)] * 2
    + [(256, 128, 3, 3), (256, 256, 3, 3), (256, 128, 1, 1)]
    + [(256, 256, 3, 3)] * 2
    + [(512, 256, 3, 3), (512, 512, 3, 3), (512, 256, 1, 1)]
    + [(512, 512, 3, 3)] * 2
    + [(1000, 512), (1000,)]
    + [(c,) for c in [64] * 10 + [128] * 10 + [256] * 10 + [512] * 10]
)


class Params(nyto.NytoModule):
    def __init__(self, shapes, device):
        super().__init__()
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s, device=device)) for s in shapes])


def gpu_time(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e) * 1e3)
    return statistics.median(ts)


def host_time(fn, reps=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        ts.append((time.perf_counter() - t0) / reps * 1e6)
        torch.cuda.synchronize()
    return statistics.median(ts)


def main():
    dev = "cuda"
    torch.manual_seed(0)
    a = Params(RESNET18, dev)
    b = a.clone()
    n = sum(p.numel() for p in a.parameters())
    fa, fb, fo = (torch.randn(n, device=dev) for _ in range(3))
    la, lb = list(a.parameters()), list(b.parameters())
    x = a.clone()
    v = x.randn() * 0.1
    p = x.randn()
    g = x.randn()

    def pso_particles():
        nonlocal v
        v = 0.7 * v + 1.5 * x.rand() * (p - x) + 1.5 * x.rand() * (g - x)
        x.__iadd__(v)

    rows = [
        ("a + b", lambda: a + b, lambda: torch.add(fa, fb, out=fo), lambda: torch._foreach_add(la, lb)),
        ("a * 2", lambda: a * 2, lambda: torch.mul(fa, 2, out=fo), lambda: torch._foreach_mul(la, 2)),
        ("a += b", lambda: a.__iadd__(b), lambda: fa.add_(fb), lambda: torch._foreach_add_(la, lb)),
        ("a.clone()", lambda: a.clone(), lambda: fo.copy_(fa), lambda: torch._foreach_mul(la, 1)),
        ("a.randn()", lambda: a.randn(), lambda: fo.normal_(), None),
        ("pso (particle arith)", pso_particles, None, None),
    ]
    print(
        f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, resnet18-size {n / 1e6:.1f}M params, 62 tensors"
    )
    print(f"{'op':22s} {'ours us':>9s} {'flat us':>9s} {'foreach us':>10s} {'ours/flat':>9s}")
    with torch.no_grad():
        for name, ours, flat, fe in rows:
            to = gpu_time(ours)
            tf = gpu_time(flat) if flat else float("nan")
            te = gpu_time(fe) if fe else float("nan")
            print(f"{name:22s} {to:9.1f} {tf:9.1f} {te:10.1f} {to / tf:9.2f}")
        bw = 3 * 4 * n / (gpu_time(lambda: torch.add(fa, fb, out=fo)) * 1e-6) / 1e12
        print(f"flat add bandwidth {bw:.2f} TB/s")
        t = Params([(4, 3), (4,)], dev)
        u = t.clone()
        print(
            f"tiny (2 params) host time per call: a+b {host_time(lambda: t + u):.2f} us, "
            f"a+=b {host_time(lambda: t.__iadd__(u)):.2f} us, foreach_add {host_time(lambda: torch._foreach_add(list(t.parameters()), list(u.parameters()))):.2f} us"
        )


if __name__ == "__main__":
    main()
