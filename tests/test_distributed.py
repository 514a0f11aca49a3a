"""nytorch.distributed on real process groups: 2-3 spawned processes, gloo,
127.0.0.1 only, a free port, every launch bounded in time (stragglers are
killed). Each launch runs a scenario function in every rank; the scenario
returns a dict that the rank saves, and the tests compare it with a
single-process reference computed here.

Launches: one 3-rank run of all value checks that ends with the faults
(rank 1 dies, rank 2 hangs, rank 0 must see clear errors on the subgroups it
shares with each), and (when nytorch.swarm exists) the sharded swarm runs.
"""

from __future__ import annotations

import datetime
import math
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import traceback
from typing import Any, Dict, List, Optional

import nytorch as nyto
import nytorch.distributed as nd
import pytest
import torch
from torch import nn

WORLD = 3
LAUNCH_TIMEOUT_S = 60.0  # a launch that takes longer fails the test (processes killed)
PG_TIMEOUT_S = 10.0  # the process groups' timeout: no collective waits longer


# --------------------------------------------------------------------------
# Models (module level: the spawned ranks import this file)
class Net(nyto.NytoModule):
    """Two dtype groups (float32, float64), a plain child, BatchNorm buffers."""

    def __init__(self, hidden: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(4, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.scale = nn.Parameter(torch.randn(hidden, dtype=torch.float64))

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale.float()


class IntNet(nyto.NytoModule):
    def __init__(self) -> None:
        super().__init__()
        self.count = nn.Parameter(torch.arange(3), requires_grad=False)


def make_net(rank: int, hidden: int = 5) -> Net:
    torch.manual_seed(100 + rank)
    return Net(hidden)


def params(net: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def combine(nets: List[nn.Module], coefs: List[float], divisor: Optional[float]) -> Dict[str, torch.Tensor]:
    """sum_r coefs[r] * p_r (/ divisor), per parameter, in rank order."""
    out = {}
    for k, _ in nets[0].named_parameters():
        acc = None
        for net, c in zip(nets, coefs):
            p = dict(net.named_parameters())[k].detach()
            term = p if c == 1.0 else p * c
            acc = term.clone() if acc is None else acc + term
        out[k] = acc if divisor is None else acc / divisor
    return out


# --------------------------------------------------------------------------
# The launcher
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    rank: int, world: int, port: int, scenario: str, out_dir: str, pg_timeout: float, args: tuple, via_env: bool
) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    t0 = time.monotonic()
    try:
        import torch.distributed as dist

        if via_env:  # what torchrun sets: nd.init() reads it
            os.environ.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
            assert nd.init(timeout=pg_timeout) == (rank, world)
            assert dist.get_backend() == "gloo"
        else:
            dist.init_process_group(
                "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=pg_timeout),
            )
        result = globals()[scenario](rank, world, out_dir, *args)
    except BaseException as e:  # noqa: BLE001  (reported to the test)
        result = {"error": type(e).__name__, "message": str(e), "trace": traceback.format_exc()}
    result["elapsed"] = time.monotonic() - t0
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    sys.stdout.flush()
    os._exit(0)  # no atexit teardown of a possibly broken group


def launch(
    scenario: str,
    world: int = WORLD,
    pg_timeout: float = 20.0,
    wait_for: Optional[List[int]] = None,
    out_dir: Optional[str] = None,
    args: tuple = (),
    via_env: bool = False,
) -> List[Optional[Dict[str, Any]]]:
    """Run ``scenario(rank, world, out_dir, *args)`` in ``world`` spawned
    ranks; wait (bounded) for the ranks in ``wait_for`` (default all), kill
    the rest; return each rank's result dict (None: no result). ``via_env``:
    the ranks join with ``nd.init()`` from torchrun-style environment variables.
    Relaunched once on another port when the free port was taken meanwhile."""
    for attempt in range(2):
        results = _launch_once(scenario, world, pg_timeout, wait_for, out_dir, args, via_env)
        first = results[0] or {}
        if "address already in use" not in str(first.get("message", "")).lower():
            break
    return results


def _launch_once(scenario, world, pg_timeout, wait_for, out_dir, args, via_env):
    ctx = multiprocessing.get_context("spawn")
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out_dir = tmp.name
    for r in range(world):
        path = os.path.join(out_dir, f"rank{r}.pt")
        if os.path.exists(path):
            os.remove(path)
    port = _free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, world, port, scenario, out_dir, pg_timeout, args, via_env), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    for r in range(world) if wait_for is None else wait_for:
        procs[r].join(max(0.0, deadline - time.monotonic()))
    hung = [r for r in (range(world) if wait_for is None else wait_for) if procs[r].is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    results = []
    for r in range(world):
        path = os.path.join(out_dir, f"rank{r}.pt")
        results.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
    if tmp is not None:
        tmp.cleanup()
    assert not hung, f"ranks {hung} of {scenario} did not finish within {LAUNCH_TIMEOUT_S} s"
    return results


def ok(result: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    assert result is not None, "the rank left no result"
    assert "error" not in result, f"{result.get('error')}: {result.get('message')}\n{result.get('trace')}"
    return result


# --------------------------------------------------------------------------
# Scenario: all value checks in one 3-rank group


def _errors_of(calls):
    """name -> (exception type, message) of each call, or None where it did not raise."""
    errors = {}
    for name, call in calls.items():
        try:
            call()
            errors[name] = None
        except Exception as e:  # noqa: BLE001
            errors[name] = (type(e).__name__, str(e))
    return errors


def _values(rank: int, world: int, out_dir: str) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    net = make_net(rank)
    nd.check_species(net)

    c = net.clone()
    w_ids = [id(p) for p in c.parameters()]
    ptrs = [p.data_ptr() for p in c.parameters()]
    out = nd.all_reduce_(c)
    res["mean"] = params(c)
    res["mean_same_object"] = (
        out is c and [id(p) for p in c.parameters()] == w_ids and [p.data_ptr() for p in c.parameters()] == ptrs
    )
    res["mean_buffers"] = {k: v.clone() for k, v in c.named_buffers()}

    c = net.clone()
    nd.all_reduce_(c, op="sum")
    res["sum"] = params(c)

    c = net.clone()
    nd.all_reduce_(c, weights=rank + 1.0)  # this rank's weight
    res["wmean_scalar"] = params(c)
    c = net.clone()
    nd.all_reduce_(c, weights=[1.0, 2.0, 3.0][:world])  # every rank's weight
    res["wmean_seq"] = params(c)
    c = net.clone()
    nd.all_reduce_(c, op="sum", weights=torch.tensor(rank + 1.0))
    res["wsum"] = params(c)

    c = net.clone()
    nd.all_reduce_(c, bucket_bytes=16)  # many small buckets
    res["mean_bucketed"] = params(c)

    c = net.clone()
    nd.broadcast_(c, src=1)
    res["broadcast"] = params(c)
    c = net.clone()
    nd.broadcast_(c, src=2, bucket_bytes=8)
    res["broadcast_bucketed"] = params(c)

    gathered = nd.all_gather(net)
    res["gather"] = [params(g) for g in gathered]
    res["gather_species"] = all(g._nyto_species is net._nyto_species for g in gathered)
    res["gather_not_local"] = all(g is not net for g in gathered)
    res["gather_is_swarm"] = isinstance(gathered, nyto.Swarm) and len(gathered) == world

    # async handles
    c = net.clone()
    h = nd.all_reduce_(c, async_op=True)
    res["async_is_handle"] = isinstance(h, nd.Handle)
    res["async_same"] = h.wait() is c and h.wait() is c and h.is_completed()
    res["async_mean"] = params(c)
    c = net.clone()
    hb = nd.broadcast_(c, src=0, async_op=True)
    hg = nd.all_gather(net, async_op=True)
    hb.wait()
    res["async_broadcast"] = params(c)
    res["async_gather"] = [params(g) for g in hg.wait()]
    c = net.clone()
    h = nd.all_reduce_(c, weights=rank + 1.0, async_op=True, bucket_bytes=32)
    h.wait(timeout=10)
    res["async_wmean_scalar"] = params(c)

    # bad input: every rank raises before sending anything; nothing changes
    c = net.clone()
    before = params(c)
    errors = _errors_of(
        {
            "op": lambda: nd.all_reduce_(c, op="max"),
            "weights_len": lambda: nd.all_reduce_(c, weights=[1.0] * (world + 1)),
            "weights_neg": lambda: nd.all_reduce_(c, weights=-1.0),
            "weights_nan": lambda: nd.all_reduce_(c, weights=[float("nan")] * world),
            "weights_zero": lambda: nd.all_reduce_(c, weights=[0.0] * world),
            "weights_type": lambda: nd.all_reduce_(c, weights="x"),
            "bucket": lambda: nd.all_reduce_(c, bucket_bytes=0),
            "src": lambda: nd.broadcast_(c, src=world),
            "src_type": lambda: nd.broadcast_(c, src=1.0),
            "not_particle": lambda: nd.all_reduce_(nn.Linear(2, 2)),
            "int_mean": lambda: nd.all_reduce_(IntNet()),
        }
    )
    res["errors"] = errors
    res["errors_unchanged"] = all(torch.equal(before[k], v) for k, v in params(c).items())

    # an integer particle can be summed
    ic = IntNet()
    nd.all_reduce_(ic, op="sum")
    res["int_sum"] = ic.count.detach().clone()

    # species mismatch: rank world-1 builds another shape; every rank raises
    other = make_net(rank, hidden=5 if rank < world - 1 else 6)
    try:
        nd.all_reduce_(other)
        res["mismatch"] = None
    except nd.SpeciesMismatchError as e:
        res["mismatch"] = str(e)
    res["mismatch_unchanged"] = torch.equal(other.fc.weight.detach(), make_net(rank, other.fc.out_features).fc.weight)
    # the group is still usable afterwards
    c = net.clone()
    nd.all_reduce_(c)
    res["after_mismatch"] = params(c)
    nd.barrier(timeout=10)
    _faults(rank, world, out_dir, net, res)
    return res


def _faults(rank: int, world: int, out_dir: str, net: Net, res: Dict[str, Any]) -> None:
    """Rank 1 dies, rank 2 hangs; rank 0 sees a clear error on the group it
    shares with each (its values are saved first)."""
    import torch.distributed as dist

    g01, g02 = dist.new_group([0, 1]), dist.new_group([0, 2])
    if rank in (0, 1):
        nd.all_reduce_(net.clone(), group=g01)  # works while rank 1 lives
    if rank in (0, 2):
        nd.all_reduce_(net.clone(), group=g02)
    if rank > 0:
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
        if rank == 1:
            os._exit(3)  # dies without a word
        time.sleep(60)  # rank 2: alive but never joins again (the test kills it)
    for key, group, timeout in (("killed", g01, None), ("hung", g02, 1.5)):
        t0 = time.monotonic()
        try:
            for _ in range(3):
                nd.all_reduce_(net.clone(), group=group, timeout=timeout)
            res[key] = None
        except nd.CollectiveError as e:
            res[key] = str(e)
        res[key + "_after"] = time.monotonic() - t0


@pytest.fixture(scope="module")
def values():
    results = launch("_values", pg_timeout=PG_TIMEOUT_S, wait_for=[0])
    return [ok(r) for r in results]


@pytest.fixture(scope="module")
def nets():
    return [make_net(r) for r in range(WORLD)]


def assert_params(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], exact: bool = False) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        if exact:
            assert torch.equal(got[k], want[k]), k
        else:
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)


def test_all_reduce_mean_sum(values, nets):
    mean = combine(nets, [1.0] * WORLD, WORLD)
    total = combine(nets, [1.0] * WORLD, None)
    for r, res in enumerate(values):
        assert_params(res["mean"], mean)
        assert_params(res["sum"], total)
        assert_params(res["mean_bucketed"], mean)
        assert res["mean_same_object"], "in place: same object, Parameters and storage"
    # every rank holds the same bits
    for res in values[1:]:
        assert_params(res["mean"], values[0]["mean"], exact=True)


def test_all_reduce_keeps_buffers_local(values, nets):
    for r, res in enumerate(values):
        for k, v in nets[r].named_buffers():
            assert torch.equal(res["mean_buffers"][k], v), k


def test_all_reduce_weighted(values, nets):
    w = [r + 1.0 for r in range(WORLD)]
    want = combine(nets, w, sum(w))
    for res in values:
        assert_params(res["wmean_scalar"], want)
        assert_params(res["wmean_seq"], want)
        assert_params(res["async_wmean_scalar"], want)
        assert_params(res["wsum"], combine(nets, w, None))


def test_broadcast(values, nets):
    for res in values:
        assert_params(res["broadcast"], params(nets[1]), exact=True)
        assert_params(res["broadcast_bucketed"], params(nets[2]), exact=True)
        assert_params(res["async_broadcast"], params(nets[0]), exact=True)


def test_all_gather(values, nets):
    for res in values:
        for key in ("gather", "async_gather"):
            got = res[key]
            assert len(got) == WORLD
            for r in range(WORLD):
                assert_params(got[r], params(nets[r]), exact=True)
        assert res["gather_species"] and res["gather_not_local"] and res["gather_is_swarm"]


def test_async_handles(values, nets):
    mean = combine(nets, [1.0] * WORLD, WORLD)
    for res in values:
        assert res["async_is_handle"] and res["async_same"]
        assert_params(res["async_mean"], mean)


def test_bad_input_errors_before_anything(values):
    expect = {
        "op": ("ValueError", "op must be 'mean' or 'sum'"),
        "weights_len": ("ValueError", f"weights has {WORLD + 1} entries but the group has {WORLD} ranks"),
        "weights_neg": ("ValueError", "must be finite and >= 0"),
        "weights_nan": ("ValueError", "must be finite and >= 0"),
        "weights_zero": ("ValueError", "positive total"),
        "weights_type": ("TypeError", "weights must be a number"),
        "bucket": ("ValueError", "bucket_bytes must be a positive int"),
        "src": ("ValueError", f"src={WORLD} is not a rank"),
        "src_type": ("TypeError", "src must be a rank"),
        "not_particle": ("TypeError", "expected a particle"),
        "int_mean": ("TypeError", "op='mean' needs floating-point parameters"),
    }
    for res in values:
        for name, (etype, text) in expect.items():
            got = res["errors"][name]
            assert got is not None, f"{name}: no error"
            assert got[0] == etype and text in got[1], (name, got)
        assert res["errors_unchanged"]
        assert res["int_sum"].tolist() == [0, WORLD, 2 * WORLD]


def test_species_mismatch_detected_on_every_rank(values, nets):
    for res in values:
        msg = res["mismatch"]
        assert msg is not None, "mismatch not detected"
        assert f"ranks [{WORLD - 1}] differ from rank 0" in msg
        assert "scale: [5] float64 cpu vs scale: [6] float64 cpu" in msg, msg
        assert res["mismatch_unchanged"]
        assert_params(res["after_mismatch"], combine(nets, [1.0] * WORLD, WORLD))


def test_no_process_group_error():
    net = make_net(0)
    before = params(net)
    for call in (
        lambda: nd.all_reduce_(net),
        lambda: nd.broadcast_(net, src=0),
        lambda: nd.all_gather(net),
        lambda: nd.check_species(net),
        lambda: nd.barrier(),
    ):
        with pytest.raises(RuntimeError, match="no process group is initialised"):
            call()
    assert_params(params(net), before, exact=True)


# --------------------------------------------------------------------------
# Faults (rank 0's results of the end of _values): rank 1 died, rank 2 hung
def test_killed_rank_clear_error_within_timeout(values):
    r0 = values[0]
    assert r0["killed"] is not None, "no error after the peer died"
    assert "nytorch.distributed.all_reduce_ on rank 0" in r0["killed"]
    assert "a peer closed the connection" in r0["killed"] and "unusable" in r0["killed"]
    assert r0["killed_after"] < PG_TIMEOUT_S


def test_hung_rank_times_out(values):
    r0 = values[0]
    assert r0["hung"] is not None, "no error while the peer hung"
    assert "timed out after 1.5 s" in r0["hung"], r0["hung"]
    assert 1.4 < r0["hung_after"] < 10


# --------------------------------------------------------------------------
# Swarms: collectives on swarms, sharded PSO / ES vs one process, checkpoints
N_SWARM = 7  # uneven shards on 2 ranks: rows [0, 3) and [3, 7)
POP = 10  # ES population (5 antithetic pairs)
STEPS = 6


def fitness(swarm) -> torch.Tensor:
    """Per particle: sum of (p - 0.5)^2 over every parameter (both dtype groups)."""
    return sum(((f.to(torch.float64) - 0.5) ** 2).sum(1) for f in swarm.flats)


def pso_reference(steps: int, backend: str = "auto"):
    """The single-process run that the 2-rank run must reproduce."""
    from nytorch.algorithms import PSO

    net = make_net(0)
    swarm = nyto.Swarm(net, N_SWARM, init="randn")  # the global RNG after make_net's seed
    pso = PSO(swarm, seed=5, velocity_scale=0.1, vmax=0.3, backend=backend)
    for _ in range(steps):
        pso.tell(fitness(pso.ask()))
    return pso


def es_reference(steps: int):
    from nytorch.algorithms import ES

    es = ES(make_net(0), POP, sigma=0.1, lr=0.05, seed=7)
    for _ in range(steps):
        es.tell(fitness(es.ask()))
    return es


def _sharded(rank: int, world: int, out_dir: str) -> Dict[str, Any]:
    import torch.distributed as dist

    res: Dict[str, Any] = {}

    # collectives on plain swarms (rank-dependent values)
    torch.manual_seed(rank)
    s = nyto.Swarm(make_net(rank), 3, init="randn")
    torch.manual_seed(rank)
    s_copy = nyto.Swarm(make_net(rank), 3, init="randn")
    res["swarm_in"] = [f.clone() for f in s.flats]
    g = nd.all_gather(s)
    res["swarm_gather"] = [f.clone() for f in g.flats]
    nd.all_reduce_(s)
    res["swarm_mean"] = [f.clone() for f in s.flats]
    nd.broadcast_(s_copy, src=1)
    res["swarm_broadcast"] = [f.clone() for f in s_copy.flats]

    # sharded PSO on the ops backend (r1, r2 drawn by torch's generator)
    sw = nd.ShardedSwarm(make_net(0), N_SWARM, init="randn")
    pso = nd.ShardedPSO(sw, seed=5, velocity_scale=0.1, vmax=0.3, backend="ops")
    for step in range(STEPS):
        if step == STEPS - 1:  # this rank's state before the last step (a plain torch reference of it)
            res["pso_ops_before"] = {
                "x": [f.clone() for f in sw.local.flats],
                "v": [v.clone() for v in pso.velocity],
                "p": [p.clone() for p in pso.pbest],
                "pf": pso.pbest_fitness.clone(),
                "g": [g.clone() for g in pso.gbest],
                "gf": pso.gbest_fitness.clone(),
                "generator": pso.generator.get_state(),
            }
        pso.tell(fitness(pso.ask()))
    res["pso_ops_after"] = {"v": [v.clone() for v in pso.velocity], "p": [p.clone() for p in pso.pbest]}
    res["pso_ops_flats"] = [f.clone() for f in sw.gather().flats]
    res["pso_ops_backend"] = pso.backend

    # sharded PSO (default backend), then checkpoint/resume
    net = make_net(0)
    sw = nd.ShardedSwarm(net, N_SWARM, init="randn")
    pso = nd.ShardedPSO(sw, seed=5, velocity_scale=0.1, vmax=0.3)
    res["rows"] = (sw.lo, sw.hi)
    res["pso_backend"] = pso.backend
    for step in range(STEPS):
        local = pso.ask()
        assert len(local) == sw.hi - sw.lo
        pso.tell(fitness(local))
        if step == STEPS // 2 - 1:
            pso.save(os.path.join(out_dir, "pso_ckpt"))
    res["pso_flats"] = [f.clone() for f in sw.gather().flats]
    res["pso_gbest"] = [t.clone() for t in pso.gbest]
    res["pso_best_fitness"] = pso.best_fitness
    res["pso_history"] = [(r["best"], r["mean"], r["diversity"]) for r in pso.history.records]
    res["pso_mean"] = params(sw.mean())

    sw2 = nd.ShardedSwarm(make_net(0), N_SWARM, init="zeros")
    pso2 = nd.ShardedPSO(sw2, seed=123, vmax=0.3)
    pso2.load(os.path.join(out_dir, "pso_ckpt"))
    for _ in range(STEPS - STEPS // 2):
        pso2.tell(fitness(pso2.ask()))
    res["resumed_flats"] = [f.clone() for f in sw2.gather().flats]
    res["resumed_history"] = [(r["best"], r["mean"]) for r in pso2.history.records]

    # a checkpoint of 2 ranks does not load into a group of 1
    g0 = dist.new_group([0])
    if rank == 0:
        try:
            sw1 = nd.ShardedSwarm(make_net(0), N_SWARM, group=g0)
            pso1 = nd.ShardedPSO(sw1, seed=1)
            pso1.load(os.path.join(out_dir, "pso_ckpt"))
            res["wrong_world"] = None
        except ValueError as e:
            res["wrong_world"] = str(e)

    # sharded ES
    es = nd.ShardedES(make_net(0), POP, sigma=0.1, lr=0.05, seed=7)
    for _ in range(STEPS):
        local = es.ask()
        assert len(local) == es.hi - es.lo
        es.tell(fitness(local))
    res["es_center"] = params(es.center)
    res["es_history"] = [(r["best"], r["mean"]) for r in es.history.records]

    # rng="local": each rank its own stream (another trajectory, still a PSO)
    sw = nd.ShardedSwarm(make_net(0), N_SWARM, init="randn")
    local = nd.ShardedPSO(sw, seed=5, rng="local")
    for _ in range(STEPS):
        local.tell(fitness(local.ask()))
    res["local_rng"] = (local.best_fitness, [f.clone() for f in sw.gather().flats])

    # a ShardedSwarm checkpoint round trip
    sw.save(os.path.join(out_dir, "swarm_ckpt"))
    sw3 = nd.ShardedSwarm(make_net(0), N_SWARM, init="zeros")
    sw3.load(os.path.join(out_dir, "swarm_ckpt"))
    res["swarm_ckpt"] = all(torch.equal(a, b) for a, b in zip(sw3.local.flats, sw.local.flats))

    # bad input: the same error on every rank, nothing sent
    errors = _errors_of(
        {
            "ring": lambda: nd.ShardedPSO(sw, topology="ring"),
            "rng": lambda: nd.ShardedPSO(sw, rng="numpy"),
            "small_swarm": lambda: nd.ShardedSwarm(make_net(0), 1),
            "small_pop": lambda: nd.ShardedES(make_net(0), 1),
            "tell_len": lambda: nd.ShardedPSO(sw, seed=1).tell(torch.zeros(N_SWARM)),
        }
    )
    res["sharded_errors"] = errors

    res["examples"] = _run_examples()
    nd.barrier(timeout=10)
    return res


EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def _run_examples() -> Dict[str, Any]:
    """The two examples' main() in --quick mode inside this group (as under
    torchrun: nd.init() finds the group; they need scikit-learn, which
    requirements.txt installs)."""
    sys.path.insert(0, os.path.abspath(EXAMPLES))
    import fedavg_digits
    import pso_distributed

    out: Dict[str, Any] = {}
    out["fedavg"] = fedavg_digits.main(["--quick", "--rounds", "2"])
    try:
        out["pso"] = pso_distributed.main(["--quick", "--steps", "8", "--check"])
    except SystemExit as e:  # --check failed
        out["pso"] = f"SystemExit: {e}"
    return out


@pytest.fixture(scope="module")
def sharded():
    return [ok(r) for r in launch("_sharded", world=2, pg_timeout=PG_TIMEOUT_S, via_env=True)]


def test_swarm_collectives(sharded):
    ins = [r["swarm_in"] for r in sharded]
    for res in sharded:
        for g in range(len(ins[0])):
            torch.testing.assert_close(res["swarm_mean"][g], (ins[0][g] + ins[1][g]) / 2, rtol=0, atol=0)
            assert torch.equal(res["swarm_gather"][g], torch.cat([ins[0][g], ins[1][g]]))
            assert torch.equal(res["swarm_broadcast"][g], ins[1][g])


def test_sharded_pso_ops_backend_equals_one_process_bitwise(sharded):
    ref = pso_reference(STEPS, backend="ops")
    for res in sharded:
        assert res["pso_ops_backend"] == "ops"
        for got, want in zip(res["pso_ops_flats"], ref.swarm.flats):
            assert torch.equal(got, want)


def test_sharded_pso_step_matches_plain_torch(sharded):
    """The last step of the sharded ops-backend run against the PSO update
    written here in plain torch on the whole [N, numel] rows of each dtype
    group (elementwise, so the parameter layout does not matter): fitness,
    personal and global bests, then v = w v + c1 r1 (p - x) + c2 r2 (g - x),
    clamped, x += v. r1, r2: torch's uniform_ stream of the recorded
    generator over the full tensors, per dtype group r1 then r2."""
    before = [r["pso_ops_before"] for r in sharded]
    w, c1, c2, vmax = 0.7298, 1.49618, 1.49618, 0.3  # PSO's defaults, the run's vmax
    groups = range(len(before[0]["x"]))
    x = [torch.cat([b["x"][g] for b in before]) for g in groups]
    v = [torch.cat([b["v"][g] for b in before]) for g in groups]
    p = [torch.cat([b["p"][g] for b in before]) for g in groups]
    pf = torch.cat([b["pf"] for b in before])
    gbest, gf = before[0]["g"], before[0]["gf"]
    assert len(pf) == N_SWARM and all(torch.equal(b["gf"], gf) for b in before)
    f = sum(((xg.to(torch.float64) - 0.5) ** 2).sum(1) for xg in x)
    improved = f < pf
    assert improved.any() and not improved.all()  # both branches of the personal best
    p = [torch.where(improved[:, None], xg, pg) for xg, pg in zip(x, p)]
    pf = torch.where(improved, f, pf)
    i = int(torch.argmin(pf))
    if pf[i] < gf:
        gbest = [pg[i] for pg in p]
    gen = torch.Generator()
    gen.set_state(before[0]["generator"])
    r1, r2 = [torch.empty_like(xg) for xg in x], [torch.empty_like(xg) for xg in x]
    for g in groups:
        r1[g].uniform_(generator=gen)
        r2[g].uniform_(generator=gen)
    v = [
        (w * vg + c1 * a * (pg - xg) + c2 * b * (gg - xg)).clamp(-vmax, vmax)
        for vg, xg, pg, gg, a, b in zip(v, x, p, gbest, r1, r2)
    ]
    x = [xg + vg for xg, vg in zip(x, v)]
    for res in sharded:
        lo, hi = res["rows"]
        for g in groups:
            tol = dict(rtol=1e-6, atol=1e-6) if x[g].dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(res["pso_ops_flats"][g], x[g], **tol)
            torch.testing.assert_close(res["pso_ops_after"]["v"][g], v[g][lo:hi], **tol)
            assert torch.equal(res["pso_ops_after"]["p"][g], p[g][lo:hi])


def test_sharded_pso_equals_one_process_bitwise(sharded):
    ref = pso_reference(STEPS)
    assert [r["rows"] for r in sharded] == [(0, 3), (3, 7)]
    for res in sharded:
        assert res["pso_backend"] == ref.backend == "fuse"  # the CPU never falls back to "ops"
        for got, want in zip(res["pso_flats"], ref.swarm.flats):
            assert torch.equal(got, want)
        for got, want in zip(res["pso_gbest"], ref.gbest):
            assert torch.equal(got, want)
        assert res["pso_best_fitness"] == ref.best_fitness
        want_hist = [(r["best"], r["mean"], r["diversity"]) for r in ref.history.records]
        assert [h[:2] for h in res["pso_history"]] == [h[:2] for h in want_hist]  # bitwise
        for (_, _, d), (_, _, dw) in zip(res["pso_history"], want_hist):
            assert d == pytest.approx(dw, rel=1e-5)  # diversity sums run in another order
        assert_params(res["pso_mean"], {k: v.detach() for k, v in ref.swarm.mean().named_parameters()})


def test_sharded_pso_checkpoint_resume(sharded):
    for res in sharded:
        for got, want in zip(res["resumed_flats"], res["pso_flats"]):
            assert torch.equal(got, want)
        assert res["resumed_history"] == [h[:2] for h in res["pso_history"]]
    msg = sharded[0]["wrong_world"]
    assert msg is not None and "written by 2 ranks but this group has 1" in msg, msg


def test_sharded_rng_local_and_swarm_checkpoint(sharded):
    ref = pso_reference(STEPS)
    for res in sharded:
        best, flats = res["local_rng"]
        assert math.isfinite(best)
        assert not all(torch.equal(a, b) for a, b in zip(flats, ref.swarm.flats))  # its own streams
        assert res["swarm_ckpt"]
    assert torch.equal(sharded[0]["local_rng"][1][0], sharded[1]["local_rng"][1][0])  # one swarm


def test_sharded_bad_input(sharded):
    expect = {
        "ring": ("ValueError", "only topology='global' is sharded"),
        "rng": ("ValueError", "rng must be 'replicated' or 'local'"),
        "small_swarm": ("ValueError", "n must be an int >= the world size (2)"),
        "small_pop": ("ValueError", "popsize must be >= the world size (2)"),
        "tell_len": ("ValueError", "fitness must be a [N] tensor"),
    }
    for res in sharded:
        for name, (etype, text) in expect.items():
            got = res["sharded_errors"][name]
            assert got is not None and got[0] == etype and text in got[1], (name, got)


def test_sharded_es_equals_one_process(sharded):
    ref = es_reference(STEPS)
    for res in sharded:
        # the gradient is summed per rank then across ranks: float rounding only
        assert_params(res["es_center"], {k: v.detach() for k, v in ref.center.named_parameters()})
        for (b, m), r in zip(res["es_history"], ref.history.records):
            assert b == pytest.approx(r["best"], rel=1e-6) and m == pytest.approx(r["mean"], rel=1e-6)


def test_examples_quick(sharded):
    for res in sharded:
        ex = res["examples"]
        assert ex["fedavg"] > 0.5  # 2 rounds of FedAvg on digits
        assert isinstance(ex["pso"], float), ex["pso"]  # --check passed: same as one process
