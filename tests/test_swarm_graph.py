"""Graph mode of the swarm optimizers (``cuda_graph=``, algorithms/_graph.py).

On the CPU the capturable step runs eagerly (``cuda_graph="eager"``): PSO
against a per-particle torch reference fed the same uniforms (bitwise), ES
against a hand-written step, convergence, resume, lazy history, errors. On
CUDA (skipped here): graph replay == the eager capturable step, bitwise;
convergence; resume re-captures; a fitness that syncs names the cause."""

import importlib
import math

import nytorch as nyto
import nytorch.algorithms as algos
import pytest
import torch
from nytorch import Swarm
from nytorch.algorithms import EMA, ES, PSO, centered_ranks
from torch import nn

fz = importlib.import_module("nytorch._fuse.api")
graph = importlib.import_module("nytorch.algorithms._graph")
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and nyto._C.has_cuda()), reason="needs a CUDA device and nytorch built with CUDA"
)


class Point(nyto.NytoModule):
    def __init__(self, dim=10, dtype=torch.float32, fill=0.0):
        super().__init__()
        self.a = nn.Parameter(torch.full((dim // 2,), fill, dtype=dtype))
        self.b = nn.Parameter(torch.full((dim - dim // 2,), fill, dtype=dtype))


def sphere(s: Swarm) -> torch.Tensor:
    return s.dot(s)


def point_swarm(n=12, dim=10, device="cpu", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return Swarm(Point(dim, dtype).to(device), n, init="randn") * 3


# ---------------------------------------------------------------------------
# PSO, the capturable step run eagerly
def _pso_reference(pso, fit):
    """The next update of ``pso`` particle by particle with torch ops, fed the
    uniforms the fused program draws from the optimizer's random state."""
    (x0,), (v0,), (p0,) = [t.clone() for t in pso.swarm.flats], [pso.velocity[0].clone()], [pso.pbest[0].clone()]
    f = fit.double()
    pf = torch.where(f < pso.pbest_fitness, f, pso.pbest_fitness)
    p_new = torch.where((f < pso.pbest_fitness)[:, None], x0, p0)
    n = len(pso.swarm)
    if pso.topology == "global":
        nb = [int(torch.argmin(pf))] * n
    else:
        nb = [min(((i + d) % n for d in (-1, 0, 1)), key=lambda j: float(pf[j])) for i in range(n)]
    prog = fz.program(lambda x: (fz.rand_like(x), fz.rand_like(x)), "p")
    (r1,), (r2,) = fz.run_flat(prog, [[x0]], [], seed=pso._rng_state.clone())
    w, c1, c2 = pso.inertia, pso.cognitive, pso.social
    xs, vs = [], []
    for i in range(n):
        v = w * v0[i] + c1 * r1[i] * (p_new[i] - x0[i]) + c2 * r2[i] * (p_new[nb[i]] - x0[i])
        if pso.vmax is not None:
            v = v.clamp(-pso.vmax, pso.vmax)
        vs.append(v)
        xs.append(x0[i] + v)
    return torch.stack(xs), torch.stack(vs), p_new, pf


@pytest.mark.parametrize("topology", ["global", "ring"])
@pytest.mark.parametrize("vmax", [None, 0.8])
def test_pso_graph_step_matches_per_particle_reference(topology, vmax):
    s = point_swarm(n=7)
    pso = PSO(s, inertia=0.6, cognitive=1.2, social=1.7, vmax=vmax, topology=topology, velocity_scale=0.3, seed=3,
              cuda_graph="eager")  # fmt: skip
    numel = s.flats[0].numel()
    for step in range(4):
        fit = sphere(s)
        state0 = pso._rng_state.clone()
        x_ref, v_ref, p_ref, pf_ref = _pso_reference(pso, fit)
        pso.tell(fit)
        assert torch.equal(pso.velocity[0], v_ref), step
        assert torch.equal(s.flats[0], x_ref), step
        assert torch.equal(pso.pbest[0], p_ref) and torch.equal(pso.pbest_fitness, pf_ref)
        i = int(torch.argmin(pf_ref))
        assert torch.equal(pso.gbest[0], p_ref[i]) and float(pso.gbest_fitness) == float(pf_ref.min())
        assert pso._rng_state.tolist() == [int(state0[0]), int(state0[1]) + (numel + 3) // 4 * 4]
    assert pso.steps_done == 4 and [r["step"] for r in pso.history.records] == [1, 2, 3, 4]


def test_pso_graph_step_is_deterministic_and_converges():
    runs = []
    for _ in range(2):
        pso = PSO(point_swarm(n=32), seed=5, cuda_graph="eager")
        pso.run(sphere, 150, progress_bar=False)
        runs.append((pso.swarm.flats[0].clone(), pso.best_fitness, pso.history.best))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1:] == runs[1][1:]
    assert runs[0][1] < 1e-3
    ring = PSO(point_swarm(n=32), seed=5, topology="ring", cuda_graph="eager", maximize=True)
    ring.run(lambda s: -sphere(s), 200, progress_bar=False)
    assert ring.best_fitness > -1e-2 and ring.history.best[-1] == ring.best_fitness


def test_pso_graph_resume_is_bitwise():
    a = PSO(point_swarm(), seed=1, topology="ring", vmax=1.0, cuda_graph="eager")
    a.run(sphere, 5, progress_bar=False)
    sd = a.state_dict()
    assert "rng_state" in sd
    b = PSO(point_swarm(seed=9), seed=2, topology="ring", vmax=1.0, cuda_graph="eager")
    b.load_state_dict(sd)
    a.run(sphere, 6, progress_bar=False)
    b.run(sphere, 6, progress_bar=False)
    assert torch.equal(a.swarm.flats[0], b.swarm.flats[0]) and torch.equal(a.velocity[0], b.velocity[0])
    assert a.history.best == b.history.best and a.history.step == b.history.step
    # the default mode's checkpoints are not graph mode's (and vice versa): named, nothing loaded
    with pytest.raises(nyto.StateDictError, match="rng_state"):
        b.load_state_dict(PSO(point_swarm(), seed=1).state_dict())
    assert "rng_state" not in PSO(point_swarm(), seed=1).state_dict()


def test_history_stays_on_the_device_until_read():
    pso = PSO(point_swarm(), seed=0, cuda_graph="eager")
    g = pso._graph
    g.sync_every = 100
    for _ in range(3):
        pso.step(sphere)
    assert len(g._pending) == 3 and len(pso.history._records) == 0  # nothing read back yet
    recs = pso.history.records  # reading flushes
    assert [r["step"] for r in recs] == [1, 2, 3] and not g._pending
    assert all(not math.isnan(r["diversity"]) for r in recs)
    seen = []
    pso.run(sphere, 250, progress_bar=False, callback=seen.append)  # wraps the ring twice
    assert [r["step"] for r in seen] == list(range(4, 254))
    assert pso.history.best == sorted(pso.history.best, reverse=True)  # best so far never grows
    assert pso.history.records[-1]["best"] == pso.best_fitness


def test_graph_mode_errors():
    s = point_swarm()
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        PSO(s, cuda_graph=True)
    with pytest.raises(ValueError, match="backend='fuse'"):
        PSO(s, cuda_graph="eager", backend="ops")
    with pytest.raises(ValueError, match="must be numbers"):
        PSO(s, cuda_graph="eager", inertia=lambda t: 0.5)
    with pytest.raises(ValueError, match="True, False or 'eager'"):
        PSO(s, cuda_graph="yes")
    c = Point(fill=1.0)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ES(c, 8, backend="fuse", cuda_graph=True)
    with pytest.raises(ValueError, match="backend='fuse'"):
        ES(c, 8, cuda_graph="eager")
    with pytest.raises(ValueError, match="store_noise=False"):
        ES(c, 8, backend="fuse", store_noise=False, cuda_graph="eager")
    with pytest.raises(ValueError, match="needs a model on CUDA"):
        EMA(c, 0.9, cuda_graph=True)


class _FakeGraph:
    """Stands in for a CUDA graph on the CPU: a replay runs the body again and
    copies its results into the static outputs, as a real replay rewrites them."""

    captures = 0

    def __init__(self, fn, static):
        self.fn, self.static = fn, static
        _FakeGraph.captures += 1

    def replay(self):
        for s, r in zip(self.static, self.fn()):
            s.copy_(r)


def _fake_capture(fn, device, what, advice):
    warm = fn()  # the warm-up: a real step
    static = tuple(torch.empty_like(t) for t in warm)  # a capture runs nothing
    if _fake_capture.fail:
        raise graph.GraphCaptureError(f"{what}: pretended failure. {advice}")
    return warm, _FakeGraph(fn, static), static


def test_capture_and_replay_logic_with_a_fake_graph(monkeypatch):
    """The replay machinery of GraphMode on the CPU (a fake graph): the first
    step captures, later ones replay, a new function or a load captures
    again, and the trajectory is the eager capturable step's."""
    monkeypatch.setattr(graph, "capture", _fake_capture)
    _fake_capture.fail = False
    _FakeGraph.captures = 0
    a = PSO(point_swarm(), seed=2, vmax=1.0, cuda_graph="eager")
    a._graph.graph = True  # as cuda_graph=True, on the CPU
    b = PSO(point_swarm(), seed=2, vmax=1.0, cuda_graph="eager")
    fits = [a.step(sphere) for _ in range(5)]
    assert _FakeGraph.captures == 1
    for f in fits:
        assert torch.equal(f, b.step(sphere))
    assert torch.equal(a.swarm.flats[0], b.swarm.flats[0]) and a.history.best == b.history.best
    other = lambda s: sphere(s)  # noqa: E731  another function object: captured again
    assert torch.equal(a.step(other), b.step(other)) and _FakeGraph.captures == 2
    a.load_state_dict(b.state_dict())
    assert a._graph._cuda_graph is None
    a.run(sphere, 3, progress_bar=False)
    b.run(sphere, 3, progress_bar=False)
    assert _FakeGraph.captures == 3 and torch.equal(a.swarm.flats[0], b.swarm.flats[0])
    assert a.steps_done == b.steps_done == 9
    _fake_capture.fail = True
    with pytest.raises(algos.GraphCaptureError, match="pretended failure. .*cuda_graph=False"):
        a.step(lambda s: sphere(s))
    assert a.steps_done == 10 and a.history.records[-1]["step"] == 10  # the warm-up step counts


# ---------------------------------------------------------------------------
# ES, the capturable step run eagerly
def test_graph_centered_ranks():
    f = torch.randn(37, dtype=torch.float64)
    assert torch.equal(graph.centered_ranks(f), centered_ranks(f))
    t = torch.tensor([2.0, 1.0, 2.0, 0.0], dtype=torch.float64)  # ties broken by order
    assert graph.centered_ranks(t).tolist() == [0.5 - 2 / 3, 0.5 - 1 / 3, 0.5 - 1.0, 0.5]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_es_graph_step_matches_reference(optimizer):
    es = ES(Point(fill=1.0), 10, sigma=0.1, lr=0.05, seed=0, backend="fuse", optimizer=optimizer, cuda_graph="eager")
    c = nyto.flat_storage(es.center).flats[0]
    m, v = torch.zeros_like(c), torch.zeros_like(c)
    for t in range(1, 4):
        c0 = c.clone()
        pop = es.ask().flats[0]
        eps = es.noise[0]
        assert torch.allclose(pop[:5], c0 + 0.1 * eps, atol=1e-6) and torch.allclose(pop[5:], c0 - 0.1 * eps, atol=1e-6)
        fit = sphere(es.population)
        u = centered_ranks(fit.double())
        g = ((u[:5] - u[5:]).float() @ eps) * (-1.0 / (10 * 0.1))
        if optimizer == "adam":
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            ref = c0 - 0.05 / (1 - 0.9**t) * m / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        else:
            m = 0.9 * m + g
            ref = c0 - 0.05 * m
        es.tell(fit)
        assert torch.allclose(c, ref, rtol=1e-5, atol=1e-6), t
    assert es.best_fitness == min(r["best"] for r in es.history.records)


def test_es_graph_converges_and_resumes():
    es = ES(Point(fill=3.0), 20, sigma=0.1, lr=0.1, seed=0, backend="fuse", cuda_graph="eager")
    es.run(sphere, 100, progress_bar=False)
    sd = es.state_dict()
    other = ES(Point(fill=3.0), 20, sigma=0.1, lr=0.1, seed=7, backend="fuse", cuda_graph="eager")
    other.load_state_dict(sd)
    es.run(sphere, 100, progress_bar=False)
    other.run(sphere, 100, progress_bar=False)
    a, b = nyto.flat_storage(es.center).flats[0], nyto.flat_storage(other.center).flats[0]
    assert torch.equal(a, b) and es.best_fitness == other.best_fitness
    assert float(a.abs().max()) < 0.1


# ---------------------------------------------------------------------------
# CUDA: graph replay
def _pso_pair(**kw):
    a = PSO(point_swarm(n=64, dim=1000, device="cuda"), seed=4, cuda_graph=True, **kw)
    b = PSO(point_swarm(n=64, dim=1000, device="cuda"), seed=4, cuda_graph="eager", **kw)
    return a, b


@needs_cuda
@pytest.mark.parametrize("topology", ["global", "ring"])
def test_cuda_pso_graph_replay_equals_eager_step(topology):
    a, b = _pso_pair(topology=topology, vmax=0.5)
    for _ in range(25):
        fa, fb = a.step(sphere), b.step(sphere)
        assert torch.equal(fa, fb)
    assert a._graph._cuda_graph is not None  # replayed, not captured each step
    for x, y in ((a.swarm.flats[0], b.swarm.flats[0]), (a.velocity[0], b.velocity[0]), (a.gbest[0], b.gbest[0])):
        assert torch.equal(x, y)
    assert torch.equal(a._rng_state, b._rng_state)
    assert a.history.best == b.history.best and a.history.mean == b.history.mean


@needs_cuda
def test_cuda_pso_graph_converges_and_resumes():
    a = PSO(point_swarm(n=32, device="cuda"), seed=0, cuda_graph=True)
    a.run(sphere, 100, progress_bar=False)
    sd = a.state_dict()
    b = PSO(point_swarm(n=32, device="cuda", seed=3), seed=1, cuda_graph=True)
    b.step(sphere)  # captured, then the load forces a new capture
    b.load_state_dict(sd)
    a.run(sphere, 100, progress_bar=False)
    b.run(sphere, 100, progress_bar=False)
    assert torch.equal(a.swarm.flats[0], b.swarm.flats[0])
    assert a.best_fitness < 1e-3 and a.history.records[-1]["step"] == 200


@needs_cuda
def test_cuda_fitness_that_syncs_names_the_cause():
    pso = PSO(point_swarm(device="cuda"), seed=0, cuda_graph=True)

    def syncing(s):
        f = sphere(s)
        float(f.sum())  # a host sync: not capturable
        return f

    with pytest.raises(algos.GraphCaptureError, match="cuda_graph=False"):
        pso.step(syncing)
    assert pso.steps_done == 1  # the warm-up step was applied
    pso2 = PSO(point_swarm(device="cuda"), seed=0, cuda_graph=True)
    pso2.step(sphere)  # a capturable function still works after a failed capture elsewhere
    pso2.step(sphere)


@needs_cuda
def test_cuda_es_graph_replay_equals_eager_step():
    kw = dict(sigma=0.1, lr=0.05, seed=2, backend="fuse")
    a = ES(Point(dim=2000, fill=1.0).cuda(), 16, cuda_graph=True, **kw)
    b = ES(Point(dim=2000, fill=1.0).cuda(), 16, cuda_graph="eager", **kw)
    for _ in range(10):
        a.step(sphere)
        b.step(sphere)
    assert torch.equal(nyto.flat_storage(a.center).flats[0], nyto.flat_storage(b.center).flats[0])
    assert a.history.best == b.history.best


@needs_cuda
def test_cuda_ema_graph_equals_eager():
    torch.manual_seed(0)
    models = [Point(dim=1000).cuda().randn() for _ in range(3)]
    a, b = EMA(models[0], 0.9, cuda_graph=True), EMA(models[0], 0.9)
    for k in range(7):
        m = models[k % 3]  # another model's memory: captured again
        a.update(m)
        b.update(m)
        assert torch.equal(nyto.flat_storage(a.average).flats[0], nyto.flat_storage(b.average).flats[0])
