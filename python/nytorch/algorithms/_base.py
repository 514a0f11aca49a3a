"""Shared parts of the swarm optimizers: the ``History`` of a run (plots to a
PNG with matplotlib, an optional dependency), progress bars (tqdm, optional)
and the logging callback.

>>> h = History(); _ = h.append(step=1, best=2.0, mean=3.0, diversity=0.5); h.best
[2.0]
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .. import _checks

Callback = Callable[[Dict[str, float]], Any]
_log = logging.getLogger("nytorch.algorithms")


class History:
    """One record per step: ``step``, ``best`` (best fitness so far),
    ``mean`` (mean fitness of the step), ``diversity`` (mean distance to the
    centroid; NaN when not tracked), ``time`` (seconds since the first record)."""

    FIELDS = ("step", "best", "mean", "diversity", "time")

    def __init__(self) -> None:
        self.records: List[Dict[str, float]] = []
        self._t0: Optional[float] = None

    def append(self, **record: float) -> Dict[str, float]:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        record.setdefault("time", now - self._t0)
        self.records.append(record)
        return record

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Dict[str, float]:
        return self.records[i]

    def __getattr__(self, name: str) -> List[float]:
        if name in History.FIELDS:
            return [r.get(name, math.nan) for r in self.records]
        raise AttributeError(name)

    def state_dict(self) -> Dict[str, Any]:
        return {"records": [dict(r) for r in self.records]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        _checks.state_keys(state, "History.load_state_dict", ("records",))
        self.records = [dict(r) for r in state["records"]]

    def plot(self, path: str, title: Optional[str] = None, *, log_y: bool = False) -> str:
        """Best and mean fitness (and diversity, on a second axis) per step,
        written to the PNG file ``path``. Needs matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                "History.plot needs matplotlib: pip install matplotlib (it is an optional dependency of nytorch)"
            ) from e
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(self.step, self.best, label="best fitness")
        ax.plot(self.step, self.mean, label="mean fitness", alpha=0.7)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("fitness")
        div = self.diversity
        if any(not math.isnan(d) for d in div):
            ax2 = ax.twinx()
            ax2.plot(self.step, div, color="gray", linestyle=":", label="diversity")
            ax2.set_ylabel("diversity")
            ax2.legend(loc="upper center")
        ax.legend(loc="upper right")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


class LogCallback:
    """A callback that logs a record every ``every`` steps (``logging`` at INFO
    on the ``nytorch.algorithms`` logger, or ``print`` with ``use_print=True``).

    >>> LogCallback(use_print=True)({"step": 1, "best": 0.5, "mean": 1.0, "diversity": 2.0})
    step 1: best 0.5 mean 1 diversity 2
    """

    def __init__(self, every: int = 1, *, use_print: bool = False) -> None:
        self.every = every
        self.use_print = use_print

    def __call__(self, record: Dict[str, float]) -> None:
        if int(record["step"]) % self.every:
            return
        msg = (
            f"step {int(record['step'])}: best {record['best']:.6g} mean {record['mean']:.6g} "
            f"diversity {record.get('diversity', math.nan):.6g}"
        )
        if self.use_print:
            print(msg)
        else:
            _log.info(msg)


def progress(it: Iterable, enabled: bool, desc: str, total: Optional[int] = None):
    """``tqdm(it)`` when ``enabled`` and tqdm is installed, else ``it``."""
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, total=total, leave=True, dynamic_ncols=True)


def as_fitness(fitness: Any, n: int, device: torch.device, name: str) -> torch.Tensor:
    """Fitness values as a float64 [n] tensor on ``device`` (checked)."""
    try:
        f = None if isinstance(fitness, str) else torch.as_tensor(fitness)
    except (TypeError, ValueError, RuntimeError):
        f = None
    if f is None:
        raise TypeError(
            f"{name}: fitness must be a [N] tensor or list of real numbers with N = {n}, got {type(fitness).__name__}"
        )
    if f.dim() != 1 or f.shape[0] != n:
        raise ValueError(f"{name}: fitness must be a [N] tensor with N = {n}, got shape {list(f.shape)}")
    if f.is_complex():
        raise ValueError(f"{name}: fitness must be real")
    return f.detach().to(device=device, dtype=torch.float64)


class SwarmOptimizer:
    """The algorithm template (as evosax's): this base owns the loop
    (``step(fn)``, ``run(fn, steps)`` with a progress bar and callbacks),
    seeding, ``maximize``, best tracking, the :class:`History` and the common
    part of the checkpoints; an algorithm implements only its own ``ask`` and
    ``tell`` bodies and its own state.

    An algorithm's ``__init__`` calls ``_setup`` (checks, counters, history),
    makes its generators with ``_new_generator`` / ``_seed_generator_from``;
    its ``tell`` starts with ``f = self._fitness(fitness, n)`` (checked, sign
    flipped when ``maximize``: every algorithm minimizes ``f``), tracks the best
    with ``_observe(f)`` (or overrides ``_best_value``) and ends with
    ``_end_step(f, population)``. ``state_dict`` is the algorithm's
    ``_own_state()`` plus the common keys (``steps_done``, ``best_fitness``
    where ``_observe`` tracks it, ``rng`` / ``seed_rng`` / ``sample_seed`` for
    the generators it has, ``history``); ``load_state_dict`` checks the keys
    (``_state_keys`` + common), calls ``_load_own_state`` and restores the
    rest, so a resumed run is bitwise the same."""

    maximize: bool = False
    track_diversity: bool = False
    steps_done: int = 0
    best_fitness_: float = math.inf
    history: History
    device: torch.device = torch.device("cpu")
    generator: Optional[torch.Generator] = None  # checkpointed as "rng"
    seed_generator: Optional[torch.Generator] = None  # the kernels' Philox seeds: "seed_rng"
    sample_seed: Optional[int] = None  # this step's Philox seed (when the algorithm keeps one)
    _state_keys: Tuple[str, ...] = ()  # the algorithm's own state_dict keys
    _saves_best_fitness = True  # False where _best_value reads the algorithm's state
    _graph: Optional[Any] = None  # cuda_graph mode (algorithms/_graph.py: GraphMode), where the algorithm has one

    # -- setup --------------------------------------------------------------------
    def _setup(
        self,
        *,
        maximize: bool,
        track_diversity: bool,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        """Checks ``seed`` / ``generator``; starts the counters and the history."""
        name = type(self).__name__
        if seed is not None:
            _checks.integer(seed, name, "seed")
        _checks.generator(generator, name)
        self.maximize, self.track_diversity = maximize, track_diversity
        self.steps_done = 0
        self.best_fitness_ = math.inf
        self.history = History()

    @staticmethod
    def _new_generator(seed: Optional[int], device: Any = "cpu") -> torch.Generator:
        """A generator on ``device`` seeded with ``seed`` (or from torch's global RNG)."""
        g = torch.Generator(device=device)
        g.manual_seed(int(torch.randint(2**62, ()).item()) if seed is None else seed)
        return g

    @staticmethod
    def _seed_generator_from(generator: torch.Generator, device: Any = "cpu") -> torch.Generator:
        """A CPU generator for the kernels' per-step seeds (no device sync), seeded from ``generator``."""
        g = torch.Generator()
        g.manual_seed(int(torch.randint(0, 2**62, (), generator=generator, device=device)))
        return g

    def _next_sample_seed(self) -> int:
        """This step's Philox seed (kept in ``sample_seed`` for ``tell``)."""
        self.sample_seed = int(torch.randint(0, 2**62, (), generator=self.seed_generator))
        return self.sample_seed

    # -- ask / tell ---------------------------------------------------------------
    def ask(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def tell(self, fitness: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fitness(self, fitness: Any, n: int) -> torch.Tensor:
        """``fitness`` checked ([n], real) as float64 on the device, negated when maximizing."""
        f = as_fitness(fitness, n, self.device, f"{type(self).__name__}.tell")
        return -f if self.maximize else f

    def _observe(self, f: torch.Tensor) -> Optional[int]:
        """Track the best (minimized) fitness: the index of ``f``'s best row
        when it beats every earlier one, else None."""
        i = int(torch.argmin(f))
        v = float(f[i])
        if v < self.best_fitness_:
            self.best_fitness_ = v
            return i
        return None

    def _best_value(self) -> float:
        """The best minimized fitness so far."""
        return self.best_fitness_

    @property
    def best_fitness(self) -> float:
        """The best fitness seen so far (in the caller's sign)."""
        v = self._best_value()
        return -v if self.maximize else v

    def _end_step(self, f: torch.Tensor, population: Any) -> None:
        """Count the step and record it (diversity of ``population`` when tracked)."""
        self.steps_done += 1
        div = population.diversity() if self.track_diversity else None
        self._record(f, self._best_value(), div)

    def _record(self, fitness: torch.Tensor, best: float, diversity: Optional[float]) -> None:
        sign = -1.0 if self.maximize else 1.0
        self.history.append(
            step=self.steps_done,
            best=sign * best,
            mean=sign * float(fitness.mean()),
            diversity=math.nan if diversity is None else diversity,
        )

    # -- the loop -------------------------------------------------------------------
    def step(self, fitness_fn: Callable[[Any], Any]) -> torch.Tensor:
        """Evaluate ``fitness_fn(self.ask())`` (a [N] tensor) and ``tell`` it."""
        _checks.function(fitness_fn, f"{type(self).__name__}.step", "fitness_fn")
        if self._graph is not None:
            return self._graph.step(fitness_fn)
        population = self.ask()
        with torch.no_grad():
            fitness = fitness_fn(population)
            if not isinstance(fitness, str):
                try:
                    fitness = torch.as_tensor(fitness)
                except (TypeError, ValueError, RuntimeError):
                    pass  # tell names it
        self.tell(fitness)
        return fitness

    def run(
        self,
        fitness_fn: Callable[[Any], Any],
        steps: int,
        *,
        progress_bar: bool = True,
        callback: Optional[Callback] = None,
        desc: Optional[str] = None,
    ) -> History:
        """``steps`` calls of ``step(fitness_fn)``; shows a tqdm bar with the best
        fitness and calls ``callback(record)`` after each step."""
        where = f"{type(self).__name__}.run"
        _checks.function(fitness_fn, where, "fitness_fn")
        steps = _checks.integer(steps, where, "steps", minimum=0)
        if callback is not None:
            _checks.function(callback, where, "callback")
        if self._graph is not None:
            return self._graph.run(fitness_fn, steps, progress_bar, callback, desc or type(self).__name__)
        bar = progress(range(steps), progress_bar, desc or type(self).__name__, total=steps)
        for _ in bar:
            self.step(fitness_fn)
            rec = self.history.records[-1]
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(best=f"{rec['best']:.4g}", mean=f"{rec['mean']:.4g}", refresh=False)
            if callback is not None:
                callback(rec)
        return self.history

    # -- checkpoints ------------------------------------------------------------------
    def _own_state(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_own_state(self, state: Dict[str, Any], where: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _common_keys(self) -> Tuple[str, ...]:
        keys = ["steps_done"]
        if self._saves_best_fitness:
            keys.append("best_fitness")
        for key, have in (
            ("rng", self.generator is not None),
            ("seed_rng", self.seed_generator is not None),
            ("sample_seed", self.sample_seed is not None),
        ):
            if have:
                keys.append(key)
        return tuple(keys) + ("history",)

    def state_dict(self) -> Dict[str, Any]:
        """The algorithm's state (see its ``_own_state``), step, best, RNG states, history."""
        if self._graph is not None:  # device-held records and values to the host
            self._graph.sync()
        state = self._own_state()
        common = {
            "steps_done": self.steps_done,
            "best_fitness": self.best_fitness_,
            "rng": self.generator.get_state() if self.generator is not None else None,
            "seed_rng": self.seed_generator.get_state() if self.seed_generator is not None else None,
            "sample_seed": self.sample_seed,
            "history": self.history.state_dict(),
        }
        state.update((k, common[k]) for k in self._common_keys())
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore ``state_dict()`` output in place."""
        where = f"{type(self).__name__}.load_state_dict"
        _checks.state_keys(
            state,
            where,
            tuple(self._state_keys) + self._common_keys(),
            strict=type(self).state_dict is SwarmOptimizer.state_dict,
        )  # a subclass may add keys
        self._load_own_state(state, where)
        self.steps_done = int(state["steps_done"])
        if self._saves_best_fitness:
            self.best_fitness_ = float(state["best_fitness"])
        if self.generator is not None:
            self.generator.set_state(state["rng"])
        if self.seed_generator is not None:
            self.seed_generator.set_state(state["seed_rng"])
        if self.sample_seed is not None:
            self.sample_seed = int(state["sample_seed"])
        self.history.load_state_dict(state["history"])
        if self._graph is not None:  # captured again on the next step
            self._graph.reload()
