"""Train one variant under the paper's protocol with denormal flushing OFF, and keep the late-epoch checkpoints.

Why: V6 holds thousands of subnormal weights and Adam moments after ~5 epochs, and only then is a step several
times slower without flushing. A benchmark that starts from a fresh model never sees that, so `bench`
times the state this script saves (bench/late_states/). It is a real trial's checkpoint, not a
synthetic one: about an hour of one core for V6 to epoch 7.

    python scripts/make_late_state.py --variant v6 --epochs 7 --out /tmp/late
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from bench.late_state import count_subnormal
from orchestrator.training.config import TrainConfig
from orchestrator.training.train import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="v6")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=7, help="train this many epochs (default: 7)")
    p.add_argument("--keep-from", type=int, default=5, help="save the checkpoints of this epoch on (default: 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--data-dir", default="",
                   help="CIFAR-10 directory (default: $CIFAR10_DIR, else ~/.cache/resnet-revisited/cifar10)")
    p.add_argument("--out", type=Path, required=True, help="folder for <variant>-seed<k>-epoch<e>-noflush.pt")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(TrainConfig(), epochs=args.epochs, flush_denormal=False, compile=False,
                              data_dir=args.data_dir, export="none")

    def on_epoch_end(seed: int, epoch: int, metrics: dict, make_state) -> None:
        state = make_state()
        params, moments = count_subnormal(state)
        print(f"epoch {epoch}: val_accuracy {metrics['val_accuracy']:.4f}, {metrics['epoch_seconds']:.0f} s, "
              f"{params} subnormal parameters, {moments} subnormal exp_avg entries", flush=True)
        if epoch >= args.keep_from:
            path = args.out / f"{args.variant}-seed{args.seed}-epoch{epoch}-noflush.pt"
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(path)  # whole or absent: a killed run leaves no half-written state

    train(cfg, args.variant, args.seed, on_epoch_end=on_epoch_end, measure=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
