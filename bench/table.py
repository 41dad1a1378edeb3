"""The Markdown report: the header, the targets with their verdicts (and each miss's cause), then each measured
part's section, blocks joined with a blank line; tables of formatted cells via `analysis.tables.to_markdown`."""
import statistics

import pandas as pd

from bench.sizes import (BATCH, TARGET_DATA_SHARE, TARGET_EFFICIENCY, TARGET_FUSED_SPEEDUP, TARGET_OVERHEAD,
                         TARGET_PIPELINE_SPEEDUP, TARGET_SPEEDUP, TARGET_STEP_SPEEDUP)
from orchestrator.analysis.tables import to_markdown

STEP_PARTS = ("data", "fwd_bwd", "adam")
ROUTE_COLUMNS = {"plain": "plain ms", "eager": "eager ms", "compiled": "compiled ms", "graph": "CUDA graph ms",
                 "fused": "fused ms/model"}


def render(res: dict) -> str:
    env = res["environment"]
    blocks = header_section(env) + targets_sections(res) + [  # then each part's section, only when measured
        block for key, section in SECTIONS.items() if res.get(key) for block in section(res[key], env)]
    return "\n\n".join(blocks) + "\n"


def table(rows: list[list[str]], columns: list[str]) -> str:
    return to_markdown(pd.DataFrame(rows, columns=columns))


def verdict(value: float, target: float, shortfall: str, cause: str, at_most: bool = False) -> str:
    """'met', or by how much (`shortfall` formats it) the value missed the target, and why."""
    met = value <= target if at_most else value >= target
    return "met" if met else f"**missed** by {shortfall.format(abs(target - value))}: {cause}"


def spread(xs) -> str:
    return f"{statistics.median(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}]"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def header_section(env: dict) -> list[str]:
    cuda = (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}, MPS daemon {'running' if env['mps'] else 'not running'}"
            if env["device"] == "cuda" else "")
    return [f"# Benchmark ({'quick' if env['quick'] else 'full'}) - {env['time']}",
            f"Device: {env['device_label']}. torch {env['torch']}{cuda}, {env['cores']} CPU cores, {env['threads']} "
            f"thread(s) per trial. Data: {env['data']}. Every ratio is taken within this run, measurements "
            "interleaved; other processes on the machine are not controlled (their load is reported where it matters).",
            *(["**Quick run**: tiny epochs and short trials; figures are indicative only (the orchestration trials "
               "last well under the one minute the target is defined on)."] if env["quick"] else [])]


def targets_sections(res: dict) -> list[str]:
    """The targets of parts 1, 3 and 4, then those of the fast path (7 and 8), each table only when measured."""
    tp, par, orch, proj, steps, late = (res.get(k) for k in ("throughput", "parallel", "orchestration",
                                                              "projection", "steps", "late"))
    rows, fast = [], []
    if tp:
        rows.append(every_variant(f"trainer >= {TARGET_SPEEDUP}x plain route, every variant", tp, "speedup",
                                  TARGET_SPEEDUP, ": shortfall and cause in table 1"))
    if par:
        rows.append([f"parallel efficiency >= {TARGET_EFFICIENCY} at K={par['k']}", f"{par['efficiency']:.3f}",
                     parallel_verdict(par)])
    if orch:
        wall, structural = orch["overhead"], orch["structural_overhead"]
        gap = orch["ray_load"]["other_cores"] - orch["plain_load"]["other_cores"]
        how = (f"judged on the structural figure: outside load differed by {gap:+.2f} cores between the phases, "
               "which the wall ratio cannot separate from Ray's cost; ") if abs(gap) > 0.25 else ""
        projected = (f"; projected for the paper's grid: {proj['orchestration_fraction']:.1%}"
                     if proj and "error" not in proj else "")
        rows.append([f"orchestration overhead <= {TARGET_OVERHEAD:.0%}",
                     f"wall {wall:+.1%} on this grid, structural {structural:.1%}{projected}",
                     how + verdict(structural if how else wall, TARGET_OVERHEAD, "{:.1%}", orchestration_cause(orch),
                                   at_most=True)])
    if steps:
        trainer = steps["trainer_route"]
        fast.append(every_variant(f"{trainer} trainer step >= {TARGET_STEP_SPEEDUP}x plain, fresh model, every "
                                  "variant", steps, "trainer_speedup", TARGET_STEP_SPEEDUP, " (table 7)"))
        fast.append(every_variant(f"fused seeds (K={steps['fused_k']}) >= {TARGET_FUSED_SPEEDUP}x per model-step vs "
                                  f"the {trainer} trainer", steps, "fused_speedup", TARGET_FUSED_SPEEDUP, " (table 7)"))
    if late:
        fast.append([f"{late['trainer_route']} trainer step >= {TARGET_STEP_SPEEDUP}x plain, late-epoch V6 state",
                     f"{late['trainer_speedup']:.2f}x",
                     verdict(late["trainer_speedup"], TARGET_STEP_SPEEDUP, "{:.2f}x", "table 8")])
    columns = ["target", "measured", "verdict"]
    return ((["## Targets", table(rows, columns)] if rows else [])
            + (["## Targets of the fast path (parts 7 and 8)", table(fast, columns)] if fast else []))


def every_variant(target: str, part: dict, key: str, at_least: float, where: str) -> list[str]:
    """A target every variant must meet: the worst variant's figure, and which missed it."""
    worst, row = min(part["variants"].items(), key=lambda kv: kv[1][key])
    missed = [v for v, r in part["variants"].items() if r[key] < at_least]
    return [target, f"min {row[key]:.2f}x ({worst})", "met" if not missed else f"**missed** for {', '.join(missed)}"
            + where]


def parallel_verdict(par: dict) -> str:
    other = statistics.median(par["other_processes_cores"])
    cause = (f"other processes kept {other:.2f} cores busy during the runs, so the {par['k']} trials did not have "
             f"{par['k']} free cores" if other > 0.2 else
             f"other load was low ({other:.2f} cores), so the K trials slow each other: they share the L3 cache and "
             "memory bandwidth (and, on a VM, possibly one physical core)")
    return verdict(par["efficiency"], TARGET_EFFICIENCY, "{:.3f}", cause)


def orchestration_cause(orch: dict) -> str:
    plain_other, ray_other = (orch[f"{phase}_load"]["other_cores"] for phase in ("plain", "ray"))
    parts = [f"Ray start-up and driver checks {orch['fixed_seconds']:.1f} s (once per sweep)",
             f"trials began {orch['late_start_seconds']:.1f} s later (actor start, imports)",
             f"{orch['outside_epochs_extra_seconds']:.1f} s more per trial outside the epochs (checkpoints, "
             "MLflow logging, model upload)",
             f"Ray's daemons and driver used {orch['daemon_cores']:.2f} cores while the trials trained"]
    if max(plain_other, ray_other) > 0.2:
        parts.append(f"other processes kept {plain_other:.2f} / {ray_other:.2f} cores busy (plain / Ray phase)")
    if orch["min_trial_seconds"] < 60:
        parts.append(f"the trials lasted {orch['min_trial_seconds']:.0f} s, under the 1 minute the target "
                     "assumes, so start-up weighs more than it would")
    return "; ".join(parts)


# --- parts 1 and 2 -------------------------------------------------------------------------------------------------
def step_ms(components: dict, route: str) -> float:
    return sum(components[f"{route}_{part}_ms"] for part in STEP_PARTS)


def fwd_bwd_cap(components: dict) -> float:
    """The speed-up if data and optimizer cost nothing and fwd+bwd took the faster memory format."""
    return step_ms(components, "plain") / min(components["trainer_fwd_bwd_ms"], components["plain_fwd_bwd_ms"])


def throughput_cause(row: dict) -> str:
    parts = row["components"]
    plain, trainer, fwd_bwd = step_ms(parts, "plain"), step_ms(parts, "trainer"), parts["trainer_fwd_bwd_ms"]
    format_gain = fwd_bwd / parts["plain_fwd_bwd_ms"] - 1
    memory_format = " (contiguous, see *)" if not row["channels_last"] else (
        f" (channels_last {format_gain:+.0%} vs contiguous)" if abs(format_gain) > 0.05 else "")
    return (f"forward+backward, the same convolutions in both routes, is {fwd_bwd:.1f} of the trainer's {trainer:.1f} "
            f"ms step{memory_format}; the trainer cut data+Adam from {plain - parts['plain_fwd_bwd_ms']:.1f} to "
            f"{trainer - fwd_bwd:.1f} ms; even at zero data+Adam the cap is {fwd_bwd_cap(parts):.2f}x")


def throughput_section(tp: dict, env: dict) -> list[str]:
    variants = tp["variants"]
    rounds = len(next(iter(variants.values()))["trainer_images_per_second"])
    rows = [[f"{v}{'' if r['channels_last'] else ' *'}", f"{r['trainer_median_images_per_second']:.0f}",
             f"{r['trainer_ms_per_step']:.2f}", f"{r['plain_median_images_per_second']:.0f}",
             f"{r['plain_ms_per_step']:.2f}", f"{r['speedup']:.2f}x",
             verdict(r["speedup"], TARGET_SPEEDUP, "{:.2f}x", throughput_cause(r))] for v, r in variants.items()]
    parts = [[v, *(f"{r['components'][f'{route}_{part}_ms']:.2f}" for route in ("plain", "trainer")
                   for part in STEP_PARTS),
              f"{step_ms(r['components'], 'plain') / step_ms(r['components'], 'trainer'):.2f}x",
              f"{fwd_bwd_cap(r['components']):.2f}x"] for v, r in variants.items()]
    blocks = [f"## 1. Training throughput, batch {BATCH}, train mode, focused augmentation ({env['device_label']})",
              f"One epoch of {tp['samples_per_epoch']} samples ({tp['per_class']}/class + focus-class "
              f"copies) per measurement, {rounds} rounds interleaved trainer/plain (ABBA); img/s are medians, the "
              "speed-up is the median of the per-round ratios. Trainer: `orchestrator.training.train.train` uncompiled "
              "(part 7 times the compiled step), otherwise the default config (channels_last, fused Adam, in-memory "
              "batched augmentation). Plain: torchvision-style PIL dataset + DataLoader + tutorial loop + default "
              f"(for-loop) Adam, contiguous. Other processes kept {tp['load']['other_cores']:.2f} of {env['cores']} "
              "cores busy on average meanwhile.",
              table(rows, ["variant", "trainer img/s", "trainer ms/step", "plain img/s", "plain ms/step", "speed-up",
                           f"target >= {TARGET_SPEEDUP}x"]),
              "Where the step time goes (ms per step; a plain and a trainer-style step run alternately on the same "
              "data with a timer per part, so load hits all parts alike; cap = plain step / the faster fwd+bwd, the "
              "speed-up if data and optimizer cost nothing):",
              table(parts, ["variant", "plain data", "plain fwd+bwd", "plain Adam (for-loop)", "trainer data",
                            "trainer fwd+bwd", "trainer Adam (fused)", "speed-up of these steps", "cap"])]
    if any(not r["channels_last"] for r in variants.values()):
        blocks.append("\\* the trainer keeps this variant contiguous on CPU (`train.build`): torch's oneDNN "
                      "backward of a strided 1x1 conv with 2-7 input channels in channels_last corrupts the heap "
                      "(the dense skip from the image in v2/alpha).")
    return blocks + flop_rate_section(tp, env)


def flop_rate_section(tp: dict, env: dict) -> list[str]:
    rows = [[v, f"{r['macs_per_image']:,}", f"{r['trainer_gflops']:.2f}", f"{r['trainer_peak_fraction']:.1%}",
             f"{r['plain_gflops']:.2f}", f"{r['plain_peak_fraction']:.1%}"] for v, r in tp["variants"].items()]
    rounds = ", ".join(f"{x:.1f}" for x in tp["peak_gflops_per_round"])
    return [f"## 2. Achieved FLOP rate vs measured peak ({env['device_label']})",
            f"Peak: best fp32 {env['peak_n']}x{env['peak_n']} matmul, {env['threads']} thread(s): "
            f"{tp['peak_gflops']:.1f} GFLOP/s (rounds: {rounds}); all {env['cores']} cores: "
            f"{tp['peak_all_cores_gflops']:.1f} GFLOP/s. Achieved = 6 x MACs/image (convs + linears, "
            "FlopCounterMode) x images/s.",
            table(rows, ["variant", "MACs/image", "trainer GFLOP/s", "fraction of peak", "plain GFLOP/s",
                         "fraction of peak"])]


# --- parts 3 to 6 --------------------------------------------------------------------------------------------------
def parallel_section(par: dict, env: dict) -> list[str]:
    row = [str(par["k"]), f"{par['single_median']:.0f}", f"{par['aggregate_median']:.0f}",
           f"{par['efficiency']:.3f}", f"{min(par['overlap_fraction']):.0%}",
           f"{statistics.median(par['other_processes_cores']):.2f}", parallel_verdict(par)]
    return [f"## 3. Parallel efficiency ({env['device_label']})",
            f"{par['variant']}, trainer epochs of {par['samples_per_epoch']} samples, {par['k']} "
            "spawned processes x 1 thread started together vs one alone, interleaved; efficiency = median over "
            "rounds of aggregate / (K x single).",
            table([row], ["K", "single img/s", "aggregate img/s", "efficiency", "overlap of the K epochs",
                          "other processes' load (cores)", f"target >= {TARGET_EFFICIENCY}"])]


def orchestration_section(orch: dict, env: dict) -> list[str]:
    k = orch["k"]
    walls = [f"{orch[key]:.1f}" for key in ("plain_wall_seconds", "ray_wall_seconds", "ray_init_seconds",
                                            "ray_fit_seconds")]
    routes = [[label, f"{orch[f'{route}_first_trial_start_seconds']:.1f}",
               *(f"{statistics.median(t[key] for t in orch[f'{route}_trials']):{fmt}}" for key, fmt in (
                   ("seconds", ".1f"), ("epoch_seconds", ".1f"), ("train_images_per_second", ".0f"))),
               *(f"{orch[f'{route}_load'][key]:.2f}" for key in ("machine_cores", "ours_cores", "other_cores"))]
              for route, label in (("plain", "plain processes"), ("ray", "Ray + MLflow"))]
    by_process = [(label, orch[f"{phase}_load"][key]) for label, phase, key in (
        ("Plain phase", "plain", "ours_by_process_cores"), ("Ray phase", "ray", "ours_by_process_cores"),
        ("Ray phase while all trials trained", "ray", "steady_by_process_cores"))]
    return [f"## 4. Orchestration overhead ({env['device_label']})",
            f"Grid: {orch['variant']} x {k} seeds, {orch['epochs']} epoch(s) on "
            f"{orch['per_class']}/class, {k} trials at once, 1 thread each, full trial (validation, "
            f"latency) both ways. Plain: `train()` looped in {k} spawned processes (process start included). Ray: "
            "`ray.init` + `orchestrator.run.run_sweep` (Tune, per-epoch checkpoints, MLflow SQLite in a temp dir, "
            "model logging, system metrics; report off). One run each.",
            table([[*walls, f"{orch['overhead']:+.1%}", f"{orch['structural_overhead']:.1%}",
                    f"{orch['min_trial_seconds']:.0f}"]],
                  ["plain wall s", "Ray+MLflow wall s", "of which ray.init s", "tuner.fit s", "wall overhead",
                   "structural overhead", "shortest trial s"]),
            "Structural = (start-up once + later trial start + extra trial time outside the epochs) / plain wall "
            "+ the CPU of Ray's daemons and driver / K: the parts that outside load hardly moves. The wall ratio "
            "is judged when both phases saw about the same outside load, the structural one otherwise.",
            "Where it goes (medians over the trials; Ray's from each trial's MLflow run, start to end):",
            table(routes, ["route", "first trial began after s", "trial s", "of which epochs (train + validation) s",
                           "train img/s per trial", "machine busy (cores)", "ours (cores)",
                           "other processes (cores)"]),
            *(f"{label}, our processes by CPU (cores): " + ", ".join(  # the busiest eight
                f"{name} {cores:.2f}" for name, cores in sorted(processes.items(), key=lambda kv: -kv[1])[:8])
              for label, processes in by_process)]


def projection_section(proj: dict, env: dict) -> list[str]:
    title = f"## 5. Projected wall time of the paper's grid ({env['device_label']})"
    if "error" in proj:
        return [title, proj["error"]]
    k, floor, route, fused = proj["k"], proj["floor_seconds"], proj["trainer_route"], proj["fused_wall_seconds"]
    choice = (f"--fuse-seeds auto fuses: {proj['pairs']} pairs > {k} trial slots" if proj["auto_fuses"]
              else f"--fuse-seeds auto does not fuse: {proj['pairs']} pairs <= {k} trial slots")

    def row(label, seconds):
        return [label, hours(seconds), hours(floor) if floor else "n/a", f"{seconds / floor:.1f}x" if floor else "n/a"]
    rows = [row(f"trainer + Ray/MLflow (old default: one trial per (variant, seed), {route} step)",
                proj["trainer_wall_seconds"]),
            *([row(f"trainer with --fuse-seeds (part 7's speed-up) + Ray/MLflow (new default here: {choice})", fused)]
              if fused else []),
            row("plain route, same parallelism, no orchestration", proj["plain_wall_seconds"])]
    partial = (f" Only {proj['variants_measured']} variant(s) measured: the figures cover those only."
               if proj["partial_grid"] else "")
    blocks = [title,
              f"{proj['trials']} trials (5 seeds per variant) x 10 epochs x 70,000 images + 10 validation passes "
              f"of 10,000 + the latency measurement; {k} trials at once (speed-up {k * proj['efficiency']:.2f}"
              f"{'' if proj['sharing_measured'] else ', not measured'}). Ray/MLflow: "
              + (f"{hours(proj['orchestration_seconds'])}, {proj['orchestration_fraction']:.1%} of the "
                 "old default's wall time" if proj.get("orchestration_measured", True) else "not measured "
                 "(part 4 did not run), counted as nothing")
              + f". Floor = total FLOPs / the best measured matmul rate of the machine.{partial}",
              table(rows, ["route", "projected wall", "compute floor", "projected / floor"]),
              default_line(proj),
              f"Total {proj['total_flops'] / 1e15:.3f} PFLOP (training 6 x MACs per image, evaluation 2 x)."]
    if proj["sharing"]:
        blocks.append(table([[str(r["k"]), f"{r['speedup']:.2f}", hours(r["wall_seconds"])] for r in proj["sharing"]],
                            ["K trials sharing the device", "speed-up (measured)", "grid wall time, old default"]))
    return blocks + ["Assumptions:\n" + "\n".join(f"- {a}" for a in proj["assumptions"])]


def default_line(proj: dict) -> str:
    """`make run` (all 8 variants x 5 seeds) under the sweep's new default against its old one."""
    old, new, ratio = (proj[k] for k in ("trainer_wall_seconds", "default_wall_seconds", "default_speedup"))
    head = f"**`make run` ({proj['pairs']} (variant, seed) pairs, {proj['k']} trial slots)**: "
    if not proj["auto_fuses"]:
        return head + f"the new default (`--fuse-seeds auto`) keeps one trial per pair here: the same {hours(old)}."
    if new is None:
        return head + "the new default (`--fuse-seeds auto`) fuses here; not projected without part 7's fused step."
    return (head + f"old default {hours(old)}, new default (`--fuse-seeds auto`: fused) {hours(new)}: "
            + (f"**{ratio:.2f}x** faster." if ratio >= 1 else f"**{1 / ratio:.2f}x** slower."))


def latency_section(lat: dict, env: dict) -> list[str]:
    try:
        from models import reference
        paper = reference.load()["latency_ms_per_image"].to_dict()
    except Exception:  # the paper's column is context, never a reason to fail
        paper = {}
    repeats = len(next(iter(lat["variants"].values()))["latency_ms_per_image"])
    rows = [[v, spread(r["latency_ms_per_image"]), spread(r["latency_ms_batch1"]), f"{paper.get(v, float('nan')):.3f}"]
            for v, r in lat["variants"].items()]
    return [f"## 6. Inference latency ({env['device_label']}, 1 thread, memory format as the trainer)",
            f"`measure_latency`: per image = forward + argmax on batches of 4 over {lat['images']} validation "
            f"images (paper's definition); batch-1 = median of {lat['batch1_calls']} single-image calls. "
            f"median [min-max] over {repeats} repeats, variants interleaved. Other processes kept "
            f"{lat['load']['other_cores']:.2f} of {env['cores']} cores busy on average meanwhile.",
            table(rows, ["variant", "ms/image (batches of 4)", "ms batch 1", "paper ms/image (their hardware)"])]


# --- parts 7 and 8, the epoch, concurrency and the pipeline --------------------------------------------------------
def steps_section(steps: dict, env: dict) -> list[str]:
    trainer, routes = steps["trainer_route"], steps["routes"]
    vs_eager = trainer != "eager"  # the eager column compares the default with the eager step, when they differ
    rows, notes = [], set()
    for v, row in steps["variants"].items():
        cells = [f"{row[f'{r}_ms_per_step']:.2f}" if f"{r}_ms_per_step" in row else "not timed" for r in routes]
        first = row["compile_seconds"].get(trainer)
        ratios = [row["trainer_speedup"], *([row["eager_speedup"]] if vs_eager else []), row["fused_speedup"]]
        rows.append([v, *cells, *(f"{x:.2f}x" for x in ratios), f"{first:.0f}" if first is not None else "-"])
        notes.update(f"{r}: {why}" for r, why in row.get("not_timed", {}).items() if r in routes)
    return [f"## 7. ms per model-step, fresh models, batch {BATCH} ({env['device_label']}, {env['threads']} thread(s))",
            f"Median over {steps['rounds']} rounds of {steps['calls']} calls per route, the routes interleaved (the "
            "order rotates each round). plain: PIL + DataLoader + tutorial loop + default Adam. eager: the trainer's "
            "step (`--no-compile`). compiled: the default full-run trainer on CPU, the whole step in one "
            "`torch.compile`. CUDA graph: the default on CUDA, the whole step as one graph. fused: `--fuse-seeds`, "
            f"K={steps['fused_k']} seeds as one stacked network (uncompiled, as it trains), its call time / K. "
            "Speed-ups are medians of the per-round ratios. Compile s: the default route's first call (compiling or "
            "capturing), paid once per trial (Inductor's on-disk cache makes a variant's later trials cheaper).",
            table(rows, ["variant", *(ROUTE_COLUMNS[r] for r in routes), f"{trainer} vs plain",
                         *([f"{trainer} vs eager"] if vs_eager else []), f"fused vs {trainer}", "compile s"]),
            *[f"- {n}" for n in sorted(notes)]]


def late_section(late: dict, env: dict) -> list[str]:
    trainer, lat = late["trainer_route"], late["latency"]
    rows = [[name, f"{late[f'{name}_ms_per_step']:.2f}", spread(late["ms_per_round"][name]),
             "{} / {}".format(*late["subnormal_after_timing"][name])]
            for name in ("plain", "plain, flushed", trainer, f"{trainer}, not flushed")]
    lat_rows = [[label, spread(lat[key]["latency_ms_per_image"]), spread(lat[key]["latency_ms_batch1"])]
                for label, key in (("flushed (every trial)", "flushed"), ("not flushed", "not_flushed"))]
    return [f"## 8. The late-epoch V6 state: subnormals flushed and not ({env['device_label']}, "
            f"{env['threads']} thread(s))",
            f"`{late['state']}`: a real V6 checkpoint after epoch {late['epoch']} of the default protocol, trained "
            f"with flushing off (scripts/make_late_state.py); it holds {late['subnormal_parameters']:,} subnormal "
            f"parameters and {late['subnormal_exp_avg']:,} subnormal Adam exp_avg entries. Each route trains its own "
            "copy from it (a flushed step writes the subnormals back as zeros; the last column counts what is left "
            "after the timing: parameters / exp_avg). Without flushing the "
            f"{trainer} step takes **{late['flush_speedup']:.2f}x** the time of the flushed one, the plain route's "
            f"{late['plain_flush_speedup']:.2f}x; the default trainer (flushed) is "
            f"**{late['trainer_speedup']:.2f}x** faster than the plain route (not flushed) here.",
            table(rows, ["route", "ms per step (median)", "median [min-max] over rounds", "subnormal left"]),
            f"Inference on the same state (`orchestrator.training.latency.measure_latency`, {lat['images']} validation "
            f"images): without flushing {lat['per_image_slowdown']:.2f}x the time per image (batches of 4), "
            f"{lat['batch1_slowdown']:.2f}x at batch 1.",
            table(lat_rows, ["denormals", "ms/image (batches of 4)", "ms batch 1"])]


def epoch_section(r: dict, env: dict) -> list[str]:
    return [f"## One full-protocol epoch of {r['variant']} through train() ({env['device_label']})",
            f"{r['train_images']:,} training images ({r['data']}), then {r['val_images']:,} validation images; "
            f"CUDA graph: {r['cuda_graph']}.",
            table([[f"{r['wall_seconds']:.1f} s", f"{r['epoch_seconds']:.1f} s", f"{r['train_seconds']:.1f} s",
                    f"{r['outside_training_seconds']:.2f} s", f"{r['ms_per_step']:.3f}", f"{r['setup_seconds']:.2f} s",
                    f"{r['val_accuracy']:.3f}"]],
                  ["train() call", "epoch", "training", "outside training", "ms per step",
                   "first step (capture/compile)", "val acc"])]


def concurrency_section(r: dict, env: dict) -> list[str]:
    rows = [[k, f"failed: {row['error'][:100]}", "", ""] if "error" in row else
            [k, f"{row['model_steps_per_second']:.0f}", f"{row['speedup']:.2f}", ", ".join(map(str, row["steps"]))]
            for k, row in r["k"].items()]
    return [f"## K processes training {r['variant']} at once on the device ({env['device_label']}, MPS "
            f"{'on' if r['mps'] else 'off'})",
            table(rows, ["K", "aggregate model-steps/s", "speed-up vs K=1", "steps per process"])]


def pipeline_section(r: dict, env: dict) -> list[str]:
    rows = [[label, f"{statistics.median(r[key]):,.0f}", f"{BATCH / statistics.median(r[key]) * 1e6:.0f}",
             ", ".join(f"{x:,.0f}" for x in r[key])]
            for label, key in (("this pipeline (TrainSet, its epochs incl. augmentation)", "ours_images_per_second"),
                               ("plain route (PIL transforms, DataLoader, 0 workers)", "plain_images_per_second"))]
    met = {True: "met", False: "NOT met"}
    return [f"## Data pipeline: the paper's training batches ({env['device_label']}, {env['threads']} thread(s))",
            f"{r['train_images']:,} training images; the focused epoch of {r['samples_per_epoch']:,} samples in "
            f"batches of {BATCH}; {r['rounds']} interleaved rounds of ~{r['seconds']:g} s each, medians.",
            table(rows, ["route", "images/s", "us per batch", "rounds"]),
            f"speed-up: {r['speedup']:.1f}x (target >= {TARGET_PIPELINE_SPEEDUP:g}x: "
            f"{met[r['speedup'] >= TARGET_PIPELINE_SPEEDUP]}). Base training step, batch {BATCH} (forward, "
            f"backward, default Adam): {r['base_step_ms']:.2f} ms; data per batch is {r['data_share']:.1%} of it "
            f"(target < {TARGET_DATA_SHARE:.0%}: {met[r['data_share'] < TARGET_DATA_SHARE]})."]


SECTIONS = {"throughput": throughput_section, "parallel": parallel_section, "orchestration": orchestration_section,
            "projection": projection_section, "latency": latency_section, "steps": steps_section, "late": late_section,
            "epoch": epoch_section, "concurrency": concurrency_section, "pipeline": pipeline_section}  # report order
