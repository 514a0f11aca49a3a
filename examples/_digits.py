"""Shared parts of the digits examples: scikit-learn's 8x8 digits (shipped
inside scikit-learn, no download), a small MLP particle, loss and accuracy."""

from __future__ import annotations

import argparse
import os
import time
from typing import Tuple

import nytorch as nyto
import torch
import torch.nn.functional as F
from torch import nn


class MLP(nyto.NytoModule):
    """64 -> hidden -> 10 classifier of 8x8 digit images."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def load_digits(seed: int = 0, test_size: float = 0.25) -> Tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], a stratified split."""
    try:
        from sklearn.datasets import load_digits as sk_load
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn") from e
    d = sk_load()
    xtr, xte, ytr, yte = train_test_split(d.data, d.target, test_size=test_size, random_state=seed, stratify=d.target)
    f = lambda a: torch.tensor(a, dtype=torch.float32) / 16.0  # noqa: E731
    g = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return f(xtr), g(ytr), f(xte), g(yte)


def swarm_loss(swarm: nyto.Swarm, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every particle on (x, y): a [N] tensor (one vectorized forward)."""
    logits = swarm(x)  # [N, B, 10]
    logp = logits.log_softmax(-1)
    return -logp.gather(-1, y.expand(len(swarm), -1).unsqueeze(-1)).squeeze(-1).mean(1)


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(-1) == y).float().mean())


def loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(net(x), y)


def parser(description: str, plot: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few seconds (what the tests run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=plot, help="PNG file for the fitness history ('' for none)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


def setup(args) -> None:
    """Threads and seed from the common arguments."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def save_plot(history, path: str, title: str) -> None:
    if not path:
        return
    try:
        history.plot(path, title=title)
        print(f"plot: {os.path.abspath(path)}")
    except ImportError as e:
        print(f"(no plot: {e})")


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
