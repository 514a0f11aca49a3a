"""Before/after of particle arithmetic: ``bench_particles.py`` run alternately
by a baseline build's Python and this one's, in one invocation.

Two builds of nytorch can't share a process (both register the
``torch.ops.nytorch`` library), so each side runs ``bench_particles.py
--json`` in its own process, alternating ``--rounds`` times (A B A B ...: the
machine's slow and fast phases fall on both sides). The table gives, per
workload and op, the median over the runs of each side's per-call median and
of each side's ours/flat ratio (flat: torch's own op on one flat buffer,
measured in the same process, which cancels the machine's phase), and the
after/before ratios of both.

A baseline build is any venv with another nytorch installed, e.g. the last
release or the previous commit::

    git worktree add /tmp/base <commit> && python -m venv /tmp/base-venv
    /tmp/base-venv/bin/pip install torch==2.13.0 numpy scikit-build-core cmake ninja
    /tmp/base-venv/bin/pip install --no-build-isolation --no-deps /tmp/base
    python benchmarks/ab_particles.py --baseline /tmp/base-venv/bin/python --only tiny,many-small

Exits 0 whatever the numbers say.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))


def run_side(python: str, only: str, quick: bool, threads: int) -> List[dict]:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        cmd = [
            python,
            os.path.join(HERE, "bench_particles.py"),
            "--json",
            out,
            "--only",
            only,
            "--threads",
            str(threads),
        ] + (["--quick"] if quick else [])
        # from a neutral folder: the baseline must import its own installed nytorch
        subprocess.run(cmd, check=True, cwd=d, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)["results"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the Python of a venv with the baseline nytorch")
    ap.add_argument("--only", default="tiny,many-small", help="workloads (default: tiny,many-small)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per side, alternating (default 2)")
    ap.add_argument("--quick", action="store_true", help="bench_particles --quick runs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides (default 2)")
    args = ap.parse_args(argv)
    sides = {"before": args.baseline, "after": sys.executable}
    runs: Dict[str, List[List[dict]]] = {"before": [], "after": []}
    for r in range(args.rounds):
        for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
            print(f"ab_particles: round {r + 1}/{args.rounds}, {side} ({sides[side]})", flush=True)
            runs[side].append(run_side(sides[side], args.only, args.quick, args.threads))

    def medians(side: str) -> Dict[Tuple[str, str], Tuple[float, float]]:
        acc: Dict[Tuple[str, str], Tuple[List[float], List[float]]] = {}
        for results in runs[side]:
            for row in results:
                us = row["us"]
                ours, flat = us.get("ours"), us.get("flat")
                if ours is None or flat is None:
                    continue
                t, q = acc.setdefault((row["workload"], row["op"]), ([], []))
                t.append(ours)
                q.append(ours / flat)
        return {k: (statistics.median(t), statistics.median(q)) for k, (t, q) in acc.items()}

    before, after = medians("before"), medians("after")
    head = [
        "workload",
        "op",
        "before us",
        "after us",
        "after/before",
        "before ours/flat",
        "after ours/flat",
        "ratio after/before",
    ]
    rows = [head]
    for key in before:
        if key not in after:
            continue
        (tb, qb), (ta, qa) = before[key], after[key]
        rows.append(
            [key[0], key[1], f"{tb:.2f}", f"{ta:.2f}", f"{ta / tb:.3f}", f"{qb:.3f}", f"{qa:.3f}", f"{qa / qb:.3f}"]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    print(f"\nab_particles: medians of {args.rounds} runs per side, alternating")
    for i, r in enumerate(rows):
        print("  ".join(c.rjust(w) if i and j > 1 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
