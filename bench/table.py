"""The Markdown report: the header, the targets with their verdicts, then each measured part's section
(bench/sections.py), blocks joined with a blank line."""
from __future__ import annotations

from bench.sections import (concurrency_section, epoch_section, flop_rate_section, late_section, latency_section,
                            orchestration_cause, orchestration_judged, orchestration_section, parallel_cause,
                            parallel_section, pipeline_section, projection_section, steps_section, table,
                            throughput_section, verdict)
from bench.sizes import (TARGET_EFFICIENCY, TARGET_FUSED_SPEEDUP, TARGET_OVERHEAD, TARGET_SPEEDUP,
                         TARGET_STEP_SPEEDUP)

SECTIONS = {"throughput": lambda r, env: throughput_section(r, env) + flop_rate_section(r, env),
            "parallel": parallel_section, "orchestration": orchestration_section, "projection": projection_section,
            "latency": latency_section, "steps": steps_section, "late": late_section, "epoch": epoch_section,
            "concurrency": concurrency_section, "pipeline": pipeline_section}  # in the order of the report


def render(res: dict) -> str:
    blocks = (header_section(res["environment"])
              + targets_section(*(res.get(k) for k in ("throughput", "parallel", "orchestration", "projection")))
              + step_targets_section(res.get("steps"), res.get("late")))
    for key, section in SECTIONS.items():  # each only when measured
        if res.get(key):
            blocks += section(res[key], res["environment"])
    return "\n\n".join(blocks) + "\n"


def header_section(env: dict) -> list[str]:
    cuda = (f", CUDA {env['cuda']}, cuDNN {env['cudnn']}, MPS daemon {'running' if env['mps'] else 'not running'}"
            if env["device"] == "cuda" else "")
    blocks = [f"# Benchmark ({'quick' if env['quick'] else 'full'}) - {env['time']}",
              f"Device: {env['device_label']}. torch {env['torch']}{cuda}, {env['cores']} CPU cores, {env['threads']} "
              f"thread(s) per trial. Data: {env['data']}. Every ratio is taken within this run, measurements "
              "interleaved; other processes on the machine are not controlled (their load is reported where it "
              "matters)."]
    if env["quick"]:
        blocks.append("**Quick run**: tiny epochs and short trials; figures are indicative only (the orchestration "
                      "trials last well under the one minute the target is defined on).")
    return blocks


def targets_section(throughput, parallel, orchestration, projection) -> list[str]:
    rows = []
    if throughput:
        rows.append(every_variant(f"trainer >= {TARGET_SPEEDUP}x plain route, every variant", throughput, "speedup",
                                  TARGET_SPEEDUP, ": shortfall and cause in table 1"))
    if parallel:
        efficiency = parallel["efficiency"]
        rows.append([f"parallel efficiency >= {TARGET_EFFICIENCY} at K={parallel['k']}", f"{efficiency:.3f}",
                     verdict(efficiency >= TARGET_EFFICIENCY, f"{TARGET_EFFICIENCY - efficiency:.3f}",
                             parallel_cause(parallel))])
    if orchestration:
        wall, judged, how = orchestration_judged(orchestration)
        projected = (f"; projected for the paper's grid: {projection['orchestration_fraction']:.1%}"
                     if projection and "error" not in projection else "")
        rows.append([f"orchestration overhead <= {TARGET_OVERHEAD:.0%}",
                     f"wall {wall:+.1%} on this grid, structural {orchestration['structural_overhead']:.1%}{projected}",
                     how + verdict(judged <= TARGET_OVERHEAD, f"{judged - TARGET_OVERHEAD:.1%}",
                                   orchestration_cause(orchestration))])
    return ["## Targets", table(rows, ["target", "measured", "verdict"])] if rows else []


def every_variant(target: str, part: dict, key: str, at_least: float, where: str) -> list[str]:
    """A target every variant must meet: the worst variant's figure, and which missed it."""
    worst, row = min(part["variants"].items(), key=lambda kv: kv[1][key])
    missed = [v for v, r in part["variants"].items() if r[key] < at_least]
    return [target, f"min {row[key]:.2f}x ({worst})", "met" if not missed else f"**missed** for {', '.join(missed)}"
            + where]


def step_targets_section(steps: dict | None, late: dict | None) -> list[str]:
    """Part 7 and 8's targets: the default trainer vs plain (fresh and late state), fused seeds vs the trainer."""
    rows = []
    if steps:
        trainer = steps["trainer_route"]
        rows.append(every_variant(f"{trainer} trainer step >= {TARGET_STEP_SPEEDUP}x plain, fresh model, every "
                                  "variant", steps, "trainer_speedup", TARGET_STEP_SPEEDUP, " (table 7)"))
        rows.append(every_variant(f"fused seeds (K={steps['fused_k']}) >= {TARGET_FUSED_SPEEDUP}x per model-step vs "
                                  f"the {trainer} trainer", steps, "fused_speedup", TARGET_FUSED_SPEEDUP, " (table 7)"))
    if late:
        rows.append([f"{late['trainer_route']} trainer step >= {TARGET_STEP_SPEEDUP}x plain, late-epoch V6 state",
                     f"{late['trainer_speedup']:.2f}x",
                     verdict(late["trainer_speedup"] >= TARGET_STEP_SPEEDUP,
                             f"{TARGET_STEP_SPEEDUP - late['trainer_speedup']:.2f}x", "table 8")])
    return ["## Targets of the fast path (parts 7 and 8)", table(rows, ["target", "measured", "verdict"])] if rows else []
