"""Swarm optimizers (``nytorch.algorithms``): update rules against a plain
torch reference, convergence on sphere / Rastrigin, bitwise resume from a
checkpoint, history / progress / callbacks, bad input."""

import doctest
import importlib
import io
import math
import sys

import nytorch as nyto
import nytorch.algorithms as algos
import pytest
import torch
from nytorch import Swarm
from nytorch.algorithms import EMA, ES, PSO, History, LogCallback, centered_ranks
from nytorch.algorithms import pso as pso_module
from torch import nn

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA"))]


class Point(nyto.NytoModule):
    """A point in R^dim (two parameters, to have more than one tensor)."""

    def __init__(self, dim=10, dtype=torch.float32):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(dim // 2, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(dim - dim // 2, dtype=dtype))


def sphere(s: Swarm) -> torch.Tensor:
    return s.dot(s)


def rastrigin(s: Swarm) -> torch.Tensor:
    x = s.flats[0]
    return 10 * x.shape[1] + (x * x - 10 * torch.cos(2 * math.pi * x)).sum(1)


def point_swarm(n=24, dim=10, scale=3.0, device="cpu", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return Swarm(Point(dim, dtype).to(device), n, init="randn") * scale


def tensors(opt):
    sd = opt.state_dict()
    out = []
    for v in sd.values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out.extend(v)
        elif isinstance(v, dict):
            out.extend(t for vv in v.values() if isinstance(vv, list) for t in vv if isinstance(t, torch.Tensor))
    return out


# ---------------------------------------------------------------------------
# PSO
# ---------------------------------------------------------------------------


def random_pair(pso, x0):
    """The r1, r2 the optimizer's next update draws (same generator state)."""
    if pso.backend == "ops":
        g = torch.Generator(device=x0.device)
        g.set_state(pso.generator.get_state())
        r1, r2 = torch.empty_like(x0), torch.empty_like(x0)
        nyto.ops.uniform_([r1, r2], generator=g)
        return r1, r2
    # fuse: Philox streams 0 and 1 of the step's seed (the k-th rand_like of a program)
    fz = importlib.import_module("nytorch._fuse.api")
    g = torch.Generator()
    g.set_state(pso.seed_generator.get_state())
    seed = int(torch.randint(0, 2**62, (), generator=g))
    prog = fz.program(lambda x: (fz.rand_like(x), fz.rand_like(x)), "p")
    (r1,), (r2,) = fz.run_flat(prog, [[x0]], [], seed=seed)
    return r1, r2


BACKENDS = ["fuse", "ops"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("topology", ["global", "ring"])
def test_pso_update_matches_reference(topology, backend, device):
    if backend == "fuse" and device == "cuda" and not nyto._C.has_cuda():
        pytest.skip("nytorch was built without CUDA: no fused kernels on cuda")
    s = point_swarm(n=7, device=device)
    pso = PSO(
        s,
        inertia=0.6,
        cognitive=1.2,
        social=1.7,
        vmax=0.8,
        topology=topology,
        neighbors=1,
        velocity_scale=0.3,
        seed=3,
        backend=backend,
    )
    assert pso.backend == backend
    pso.step(sphere)  # now pbest / gbest are set, velocities nonzero
    x0, v0, p0 = s.flats[0].clone(), pso.velocity[0].clone(), pso.pbest[0].clone()
    fit = sphere(s)
    pf = torch.where(fit.double() < pso.pbest_fitness, fit.double(), pso.pbest_fitness)
    p_new = torch.where((fit.double() < pso.pbest_fitness)[:, None], x0, p0)
    if topology == "global":
        best = p_new[int(torch.argmin(pf))].expand_as(x0)
    else:
        n = len(s)
        idx = [min(((i + d) % n for d in (-1, 0, 1)), key=lambda j: float(pf[j])) for i in range(n)]
        best = p_new[idx]
    r1, r2 = random_pair(pso, x0)
    v_ref = (0.6 * v0 + 1.2 * r1 * (p_new - x0) + 1.7 * r2 * (best - x0)).clamp(-0.8, 0.8)
    pso.tell(fit)
    assert torch.allclose(pso.velocity[0], v_ref, atol=1e-6)
    assert torch.allclose(s.flats[0], x0 + v_ref, atol=1e-6)
    assert torch.equal(pso.pbest[0], p_new)
    assert pso.velocity[0].abs().max() <= 0.8


@pytest.mark.parametrize("vmax", [None, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_pso_row_calls_equal_the_best_row_buffer_bitwise(dtype, vmax):
    # CPU, global topology: the move runs as two nytorch.fuse.run_rows calls (new personal bests,
    # written by the call without r1; the rest) reading one global-best row. It must be bitwise the
    # older route: a [N, numel] buffer of best rows and one run_flat over the stacked swarm.
    def make(by_rows):
        pso = PSO(point_swarm(n=9, dim=11, dtype=dtype), vmax=vmax, velocity_scale=0.2, seed=4, backend="fuse")
        assert pso._by_rows and pso._best_rows is None
        if not by_rows:
            pso._by_rows = False
            pso._best_rows = [torch.empty_like(f) for f in pso.swarm.flats]
        return pso

    a, b = make(True), make(False)
    both_calls = 0
    for _ in range(12):
        fa, fb = rastrigin(a.swarm), rastrigin(b.swarm)
        both_calls += 0 < int((fa.double() < a.pbest_fitness).sum()) < 9
        a.tell(fa)
        b.tell(fb)
    assert both_calls > 3  # steps where both row subsets were non-empty
    for x, y in zip(tensors(a), tensors(b)):
        assert torch.equal(x, y)
    assert a.history.best == b.history.best
    assert not PSO(point_swarm(), topology="ring", seed=0)._by_rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_pso_auto_backend_is_fused_on_cpu(dtype):
    # the CPU kernels are always built: "auto" never falls back there
    assert pso_module._fuse_works(torch.device("cpu"), dtype)
    assert PSO(point_swarm(dtype=dtype), seed=0).backend == "fuse"


def test_pso_auto_falls_back_only_without_a_kernel(monkeypatch):
    # no kernel for the device or dtype: the ops backend
    assert not pso_module._fuse_works(torch.device("meta"), torch.float32)
    assert not pso_module._fuse_works(torch.device("cpu"), torch.int64)

    def broken(*args, **kwargs):
        raise RuntimeError("nytorch.fuse: a broken kernel")

    # any other failure of the fused step is an error, never a silent fallback
    monkeypatch.setattr(pso_module._fuse, "run_flat", broken)
    monkeypatch.setattr(pso_module._fuse, "run_rows", broken)
    monkeypatch.setattr(pso_module, "_WORKS", {})
    for topology in ("global", "ring"):  # run_rows / run_flat
        pso = PSO(point_swarm(n=5), seed=0, topology=topology)
        assert pso.backend == "fuse"
        with pytest.raises(RuntimeError, match="a broken kernel"):
            pso.step(sphere)
    with pytest.raises(RuntimeError, match="a broken kernel"):  # the probe on other devices too
        pso_module._fuse_works(torch.device("meta"), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("topology", ["global", "ring"])
def test_pso_converges_on_sphere(topology, backend):
    pso = PSO(point_swarm(), topology=topology, seed=0, backend=backend)
    pso.run(sphere, 250, progress_bar=False)
    assert pso.best_fitness < 1e-4
    b = pso.best
    assert (
        isinstance(b, Point)
        and abs(float(sum((q.detach() ** 2).sum() for q in b.parameters())) - pso.best_fitness) < 1e-6
    )


def test_pso_improves_rastrigin():
    s = point_swarm(n=40, dim=6, scale=2.0)
    start = float(rastrigin(s).min())
    pso = PSO(s, inertia=lambda t: 0.9 - 0.5 * t / 300, vmax=1.0, topology="ring", seed=1)
    pso.run(rastrigin, 300, progress_bar=False)
    assert pso.best_fitness < 8.0 and pso.best_fitness < 0.3 * start
    h = pso.history
    assert len(h) == 300 and all(a >= b for a, b in zip(h.best, h.best[1:]))


def test_pso_maximize():
    pso = PSO(point_swarm(), maximize=True, seed=0)
    pso.run(lambda s: -sphere(s), 200, progress_bar=False)
    assert -1e-3 < pso.best_fitness <= 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("topology", ["global", "ring"])
def test_pso_checkpoint_resumes_bitwise(topology, backend):
    pso = PSO(point_swarm(), topology=topology, vmax=1.0, velocity_scale=0.1, seed=5, backend=backend)
    pso.run(rastrigin, 4, progress_bar=False)
    buf = io.BytesIO()
    torch.save(pso.state_dict(), buf)
    pso.run(rastrigin, 3, progress_bar=False)
    expect = [t.clone() for t in tensors(pso)]
    # a fresh optimizer on a fresh swarm of the species, other seed: the checkpoint decides
    fresh = PSO(
        Swarm.from_flats(pso.swarm.template, [torch.zeros_like(pso.swarm.flats[0])]),
        topology=topology,
        vmax=1.0,
        velocity_scale=0.1,
        seed=99,
        backend=backend,
    )
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    fresh.run(rastrigin, 3, progress_bar=False)
    got = tensors(fresh)
    assert len(got) == len(expect) and all(torch.equal(a, b) for a, b in zip(got, expect))
    assert fresh.steps_done == pso.steps_done and fresh.history.best == pso.history.best


def test_pso_bad_fitness_changes_nothing():
    pso = PSO(point_swarm(n=5), seed=0)
    pso.step(sphere)
    snap = [t.clone() for t in tensors(pso)]
    for bad in (torch.ones(4), torch.ones(5, 1), [1.0, 2.0]):
        with pytest.raises(ValueError, match="N = 5"):
            pso.tell(bad)
    assert all(torch.equal(a, b) for a, b in zip(tensors(pso), snap))
    with pytest.raises(ValueError, match="topology"):
        PSO(point_swarm(), topology="star")
    with pytest.raises(TypeError, match="Swarm"):
        PSO(Point())


# ---------------------------------------------------------------------------
# ES
# ---------------------------------------------------------------------------


def test_centered_ranks():
    assert centered_ranks(torch.tensor([5.0, -1.0, 2.0, 0.0])).tolist() == pytest.approx([-0.5, 0.5, -1 / 6, 1 / 6])


@pytest.mark.parametrize("device", DEVICES)
def test_es_sampling_and_update_match_reference(device):
    torch.manual_seed(0)
    c0 = Point().to(device) + 1.0
    es = ES(c0, 6, sigma=0.1, lr=0.05, optimizer="sgd", momentum=0.0, seed=2)
    g = torch.Generator(device=device)
    g.set_state(es.generator.get_state())
    pop = es.ask()
    eps = torch.empty(3, 10, device=device)
    nyto.ops.normal_([eps], generator=g)
    center = torch.ones(10, device=device)
    assert torch.allclose(pop.flats[0][:3], center + 0.1 * eps) and torch.allclose(pop.flats[0][3:], center - 0.1 * eps)
    fit = sphere(pop)
    u = centered_ranks(fit.double())
    grad = -((u[:3] - u[3:]).float() @ eps) / (6 * 0.1)
    es.tell(fit)
    new = torch.cat([q.detach().reshape(-1) for q in es.center.parameters()])
    assert torch.allclose(new, center - 0.05 * grad, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_es_converges_on_sphere(optimizer):
    torch.manual_seed(0)
    es = ES(Point() + 2.0, 20, sigma=0.1, lr=0.1 if optimizer == "adam" else 0.02, optimizer=optimizer, seed=0)
    es.run(sphere, 300, progress_bar=False)
    c = torch.cat([q.detach().reshape(-1) for q in es.center.parameters()])
    assert float(c.norm()) < 0.2


def test_es_checkpoint_resumes_bitwise():
    es = ES(Point() + 2.0, 8, sigma=0.1, lr=0.1, seed=4)
    es.run(rastrigin, 3, progress_bar=False)
    buf = io.BytesIO()
    torch.save(es.state_dict(), buf)
    es.run(rastrigin, 3, progress_bar=False)
    expect = [t.clone() for t in tensors(es)]
    fresh = ES(es.center, 8, sigma=0.1, lr=0.1, seed=123)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    fresh.run(rastrigin, 3, progress_bar=False)
    assert all(torch.equal(a, b) for a, b in zip(tensors(fresh), expect))
    assert torch.equal(fresh.population.flats[0], es.population.flats[0])


def test_es_bad_input():
    with pytest.raises(ValueError, match="even popsize"):
        ES(Point(), 5)
    with pytest.raises(ValueError, match="optimizer"):
        ES(Point(), 4, optimizer="lbfgs")
    es = ES(Point(), 4, seed=0)
    es.ask()
    before = [t.clone() for t in tensors(es)]
    with pytest.raises(ValueError, match="N = 4"):
        es.tell(torch.ones(3))
    assert all(torch.equal(a, b) for a, b in zip(tensors(es), before))


# ---------------------------------------------------------------------------
# averaging
# ---------------------------------------------------------------------------


def test_soups_and_ema_match_reference():
    s = point_swarm(n=4)
    X = s.flats[0]
    u = algos.uniform_soup(s)
    assert torch.allclose(torch.cat([u.a, u.b]).detach(), X.mean(0))
    w = torch.tensor([1.0, 0.0, 3.0, 0.0])
    ws = algos.weighted_soup([s[i] for i in range(4)], w)
    assert torch.allclose(torch.cat([ws.a, ws.b]).detach(), (X[0] + 3 * X[2]) / 4)
    soup, kept = algos.greedy_soup(s, lambda p: -float(sum((q.detach() ** 2).sum() for q in p.parameters())))
    assert kept[0] == int(torch.argmin((X * X).sum(1)))
    ema = EMA(s[0], decay=0.9)
    ref = X[0].clone()
    for i in (1, 2, 3):
        ema.update(s[i])
        ref = 0.9 * ref + 0.1 * X[i]
    assert torch.allclose(torch.cat([ema.average.a, ema.average.b]).detach(), ref, atol=1e-6)
    # EMA of a whole swarm: one lerp over the stacked buffer
    es = EMA(s, decay=0.5)
    es.update(s + 2.0)
    assert torch.allclose(es.average.flats[0], X + 1.0)
    with pytest.raises(AssertionError):
        ema.update(Point())


# ---------------------------------------------------------------------------
# history, progress, callbacks
# ---------------------------------------------------------------------------


def test_run_calls_back_and_history_plots(tmp_path, capsys):
    seen = []
    pso = PSO(point_swarm(), seed=0)
    pso.run(sphere, 5, progress_bar=False, callback=seen.append)
    assert [r["step"] for r in seen] == [1, 2, 3, 4, 5]
    assert set(seen[0]) >= {"step", "best", "mean", "diversity", "time"}
    assert seen[-1]["best"] == pso.best_fitness and seen[0]["diversity"] > 0
    LogCallback(use_print=True)(seen[0])
    assert "best" in capsys.readouterr().out
    path = pso.history.plot(str(tmp_path / "h.png"), title="t")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_uses_tqdm(capsys):
    PSO(point_swarm(), seed=0).run(sphere, 3, progress_bar=True, desc="pso-bar")
    assert "pso-bar" in capsys.readouterr().err


def test_plot_without_matplotlib_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    h = History()
    h.append(step=1, best=1.0, mean=2.0)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        h.plot(str(tmp_path / "x.png"))


@pytest.mark.parametrize("module", [algos.pso, algos.es, algos.averaging, algos._base], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
