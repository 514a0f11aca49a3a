"""Federated averaging (FedAvg) of MLP particles on shards of scikit-learn's digits.

    torchrun --standalone --nproc-per-node=2 examples/fedavg_digits.py          # 2 clients
    torchrun --standalone --nproc-per-node=2 examples/fedavg_digits.py --quick  # a few seconds
    python examples/fedavg_digits.py --quick                                    # 1 client

Every rank is a client holding one shard of the training set (``--split label``:
each client sees mostly some of the digits). A round: every client trains its
copy of the model for ``--epochs`` epochs of SGD on its shard, then
``nytorch.distributed.all_reduce_(net, weights=len(shard))`` replaces every
copy with the average weighted by shard size: one collective per dtype group of
the particle's flat storage, not one per parameter. Rank 0 prints the test
accuracy of the averaged model after every round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nytorch.distributed as nd  # noqa: E402
from _digits import MLP, accuracy, load_digits  # noqa: E402


def client_shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int, split: str):
    """This client's training examples: every world-th one (``iid``), or a
    label-sorted block (``label``: clients see different digits mostly)."""
    if split == "label":
        order = torch.argsort(y * len(y) + torch.arange(len(y)))  # stable sort by label
        block = torch.tensor_split(order, world)[rank]
        return x[block], y[block]
    return x[rank::world], y[rank::world]


def train_locally(
    net: MLP, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int, gen: torch.Generator
) -> float:
    """Plain minibatch SGD (a fresh optimizer each round, as FedAvg clients do)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    total = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()  # updates the particle's flat storage in place
            total = loss.item()
    return total


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 rounds of 1 epoch")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="local epochs per round")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--split", choices=("iid", "label"), default="iid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a hung rank ends the job")
    args = p.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 20)
    epochs = args.epochs or (1 if args.quick else 2)

    rank, world = nd.init(timeout=args.timeout)
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = load_digits(args.seed)
    x, y = client_shard(xtr, ytr, rank, world, args.split)
    torch.manual_seed(args.seed)
    net = MLP(args.hidden)
    nd.broadcast_(net, src=0)  # every client starts from rank 0's model (checks the species too)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    if rank == 0:
        print(
            f"FedAvg: {world} client(s), {len(xtr)} training digits split '{args.split}', "
            f"{rounds} rounds x {epochs} local epochs, MLP 64-{args.hidden}-10"
        )
    t0 = time.perf_counter()
    comm = 0.0
    acc = 0.0
    for r in range(1, rounds + 1):
        local_loss = train_locally(net, x, y, epochs, args.lr, args.batch, gen)
        local_acc = accuracy(net, xte, yte)
        t = time.perf_counter()
        nd.all_reduce_(net, weights=len(x))  # weighted mean over clients, in place
        comm += time.perf_counter() - t
        acc = accuracy(net, xte, yte)
        if rank == 0:
            print(
                f"round {r:2d}: client 0 loss {local_loss:.3f}, its own test acc {local_acc:.1%}; "
                f"averaged model test acc {acc:.1%}"
            )
    everyone = nd.all_gather(net)  # every client's model: all equal after the last average
    same = all(torch.equal(everyone.flats[0][0], row) for row in everyone.flats[0])
    if rank == 0:
        print(
            f"test accuracy {acc:.1%}; clients hold the same model: {same}; "
            f"{time.perf_counter() - t0:.1f} s ({comm * 1e3:.1f} ms in all_reduce_, waiting for the "
            "slowest client included)"
        )
    nd.barrier()
    return acc


if __name__ == "__main__":
    main()
