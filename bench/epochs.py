"""Whole epochs and whole models: throughput and FLOP rate (1, 2), one full-protocol epoch, latency (6), and the
data pipeline alone (TrainSet's batches against the plain route's)."""
import dataclasses
import statistics
import time

import torch

import data
import models
from bench.inputs import even_per_class, load
from bench.measure import (interleaved, latency_rounds, matmul_peak_gflops, paired, per_second, rotated,
                           step_components)
from bench.plain import paper_adam, plain_epoch, plain_loader, tutorial_step
from bench.routes import TrainConfig, cycle, fresh_model, train
from bench.sizes import BATCH
from bench.sharing import Load


def bench_throughput(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """Parts 1 and 2: trainer vs plain epochs per variant in ABBA rounds, each with step components and matmul peaks."""
    per_class = even_per_class(sizes.train_per_class, args.data_dir)
    d = load(args.data_dir, per_class, sizes.val_images)
    focus = data.parse_focus_classes(cfg.focus_classes)
    # Uncompiled: whole epochs of ~100 steps would be mostly compiling; part 7 times the compiled step.
    epoch_cfg = dataclasses.replace(cfg, epochs=1, compile=False)
    samples = data.TrainSet(d.train_images, d.train_labels, focus_classes=focus).num_samples()
    rows = {v: {"trainer_images_per_second": [], "plain_images_per_second": [], "eval_images_per_second": [],
                "components": []} for v in args.variants}
    peaks, peaks_all, load_ = [], [], Load()
    log(f"throughput: {samples} samples per epoch ({per_class}/class + focus copies), {sizes.rounds} rounds, "
        f"{args.threads} thread(s), device {args.device}")
    for r in range(sizes.rounds):
        for v in args.variants:
            for route in rotated(["trainer", "plain"], r):
                if route == "trainer":
                    epoch = train(epoch_cfg, v, r, trial_data=d, device=args.device, measure=False)["history"][0]
                    rows[v]["trainer_images_per_second"].append(epoch["train_images_per_second"])
                    eval_seconds = epoch["epoch_seconds"] - samples / epoch["train_images_per_second"]
                    rows[v]["eval_images_per_second"].append(len(d.val_labels) / max(eval_seconds, 1e-9))
                else:
                    torch.manual_seed(r)
                    rows[v]["plain_images_per_second"].append(plain_epoch(
                        models.create_model(v).to(args.device), d.train_images, d.train_labels, focus, args.device, r))
            rows[v]["components"].append(step_components(epoch_cfg, v, args.device, sizes.component_seconds,
                                                         d.train_images, d.train_labels, focus))
            log(f"  round {r + 1} {v}: trainer {rows[v]['trainer_images_per_second'][-1]:.0f} img/s, "
                f"plain {rows[v]['plain_images_per_second'][-1]:.0f} img/s")
        peaks.append(matmul_peak_gflops(args.device, args.threads, sizes.peak_n, sizes.peak_seconds))
        peaks_all.append(matmul_peak_gflops(args.device, args.cores, sizes.peak_n, sizes.peak_seconds))
    out = {"samples_per_epoch": samples, "per_class": per_class, "val_images": len(d.val_labels),
           "load": load_.stop(), "peak_gflops_per_round": peaks, "peak_gflops": statistics.median(peaks),
           "peak_all_cores_gflops_per_round": peaks_all, "peak_all_cores_gflops": statistics.median(peaks_all)}
    out["variants"] = {v: throughput_summary(row, cfg, v, args.device, out["peak_gflops"]) for v, row in rows.items()}
    return out


def throughput_summary(row: dict, cfg: TrainConfig, variant: str, device, peak_gflops: float) -> dict:
    """One variant's rounds reduced to medians, its speed-up, step time, FLOP rate and fraction of the peak."""
    macs = models.macs_per_image(models.create_model(variant))
    trainer, plain = (statistics.median(row[f"{route}_images_per_second"]) for route in ("trainer", "plain"))
    return {
        **row, "components": {k: statistics.median(c[k] for c in row["components"]) for k in row["components"][0]},
        "macs_per_image": macs, "channels_last": fresh_model(cfg, variant, device)[1] == torch.channels_last,
        "trainer_median_images_per_second": trainer, "plain_median_images_per_second": plain,
        "speedup": paired(row, "trainer_images_per_second", "plain_images_per_second"),
        "eval_median_images_per_second": statistics.median(row["eval_images_per_second"]),
        "trainer_ms_per_step": BATCH / trainer * 1e3, "plain_ms_per_step": BATCH / plain * 1e3,
        "trainer_gflops": 6 * macs * trainer / 1e9, "plain_gflops": 6 * macs * plain / 1e9,
        "trainer_peak_fraction": 6 * macs * trainer / 1e9 / peak_gflops,
        "plain_peak_fraction": 6 * macs * plain / 1e9 / peak_gflops}


def bench_epoch(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """One epoch of base exactly as a trial trains it, no latency or export: the call's wall time, train()'s figures."""
    d = load(args.data_dir, sizes.epoch_per_class, sizes.epoch_val_images)
    cfg = dataclasses.replace(cfg, epochs=1, compile=False, export="none")
    t0 = time.perf_counter()
    result = train(cfg, "base", 0, trial_data=d, device=args.device, measure=False)
    wall = time.perf_counter() - t0
    h = result["history"][0]
    images = data.TrainSet(d.train_images, d.train_labels,  # originals + focused copies
                           focus_classes=data.parse_focus_classes(cfg.focus_classes)).num_samples()
    train_seconds = images / h["train_images_per_second"]
    log(f"  base, {images:,} images: epoch {h['epoch_seconds']:.1f} s (train {train_seconds:.1f} s), "
        f"train() call {wall:.1f} s, val accuracy {h['val_accuracy']:.3f}")
    return {"variant": "base", "train_images": images, "val_images": len(d.val_labels),
            "cuda_graph": cfg.cuda_graph and args.device.type == "cuda", "wall_seconds": wall,
            "epoch_seconds": h["epoch_seconds"], "train_seconds": train_seconds,
            "outside_training_seconds": h["epoch_seconds"] - train_seconds,
            "train_images_per_second": h["train_images_per_second"],
            "ms_per_step": BATCH / h["train_images_per_second"] * 1e3,
            "setup_seconds": result["final"]["compile_seconds"], "train_loss": h["train_loss"],
            "val_accuracy": h["val_accuracy"], "data": args.data_label}


def bench_latency(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """`measure_latency` per variant, both definitions, variants interleaved within each repeat."""
    d = load(args.data_dir, val_images=sizes.latency_images)
    log(f"latency: {len(d.val_labels)} validation images, {sizes.batch1_calls} batch-1 calls, "
        f"{sizes.latency_repeats} repeats")
    load_ = Load()
    rows = latency_rounds({v: (lambda v=v: fresh_model(cfg, v, args.device), True) for v in args.variants},
                          d.val_images, d.val_labels, sizes, args.device)
    return {"images": len(d.val_labels), "batch1_calls": sizes.batch1_calls, "variants": rows, "load": load_.stop()}


def bench_pipeline(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """How fast `data.TrainSet` builds the paper's focused epoch in batches of 4 against the plain route, with a
    Base step (default Adam) for scale; rounds interleaved, medians. Its rate includes each epoch's augmentation."""
    d = load(args.data_dir)
    focus = data.parse_focus_classes(cfg.focus_classes)
    ours = data.TrainSet(d.train_images, d.train_labels, focus_classes=focus, batch_size=BATCH, seed=0)
    ours_batches = cycle(ours.batches)
    plain_batches = cycle(lambda epoch: plain_loader(d.train_images, d.train_labels, focus))
    net = models.create_model("base").train()
    step = (net, paper_adam(net.parameters()), torch.nn.CrossEntropyLoss(), torch.randn(BATCH, 3, 32, 32),
            torch.randint(0, 10, (BATCH,)), torch.device("cpu"))

    def base_step() -> int:
        tutorial_step(*step)
        return 1
    work = {"ours": lambda: len(next(ours_batches)[1]), "plain": lambda: len(next(plain_batches)[1]),
            "step": base_step}  # each returns what it did: images, or one step
    for _ in range(10):
        base_step()
    log(f"pipeline: {len(d.train_labels):,} training images, focused epoch of {ours.num_samples():,} samples, "
        f"{sizes.rounds} rounds of ~{sizes.pipeline_seconds:g} s each")
    rates = interleaved({name: lambda r, fn=fn: per_second(fn, sizes.pipeline_seconds) for name, fn in work.items()},
                        sizes.rounds)
    ours_rate, plain_rate = statistics.median(rates["ours"]), statistics.median(rates["plain"])
    step_ms = 1e3 / statistics.median(rates["step"])
    return {"train_images": len(d.train_labels), "samples_per_epoch": ours.num_samples(), "rounds": sizes.rounds,
            "seconds": sizes.pipeline_seconds, "ours_images_per_second": rates["ours"],
            "plain_images_per_second": rates["plain"], "base_steps_per_second": rates["step"],
            "ours_median": ours_rate, "plain_median": plain_rate, "speedup": ours_rate / plain_rate,
            "base_step_ms": step_ms, "data_share": BATCH / ours_rate * 1e3 / step_ms}
