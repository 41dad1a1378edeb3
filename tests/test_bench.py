"""bench on tiny synthetic data: the --quick path runs, writes its table and JSON, and every
figure it reports is a positive number. Timings themselves are not asserted (the machine is shared)."""
import json
import math

import pytest

import bench


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_bench_writes_markdown_and_json_with_positive_figures(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "results"
    rc = bench.main(["--quick", "--data-dir", str(tiny_cifar), "--variants", "base,v2", "--rounds", "1",
                     "--skip", "orchestration", "--out-dir", str(out)])
    assert rc == 0
    md, js = sorted(out.glob("bench-quick-*.md")), sorted(out.glob("bench-quick-*.json"))
    assert len(md) == 1 and len(js) == 1
    table = md[0].read_text()
    assert table in capsys.readouterr().out  # printed as written
    for heading in ("## Targets", "## 1. Training throughput", "## 2. Achieved FLOP rate", "## 3. Parallel efficiency",
                    "## 5. Projected wall time", "## 6. Inference latency", "## Targets of the fast path",
                    "## 7. ms per model-step", "## 8. The late-epoch V6 state"):
        assert heading in table
    assert "cpu (" in table  # every section names the device that produced it

    res = json.loads(js[0].read_text())
    tp = res["throughput"]
    assert positive(tp["peak_gflops"]) and positive(tp["peak_all_cores_gflops"])
    for v in ("base", "v2"):
        row = tp["variants"][v]
        for key in ("trainer_median_images_per_second", "plain_median_images_per_second", "speedup",
                    "trainer_peak_fraction", "eval_median_images_per_second", "macs_per_image"):
            assert positive(row[key]), (v, key, row[key])
        assert all(positive(x) for x in row["components"].values())
        assert f"| {v}" in table
    # v2's dense skip from the image crashes channels_last training on CPU: the bench must say so, not crash.
    assert tp["variants"]["v2"]["channels_last"] is False and tp["variants"]["base"]["channels_last"] is True
    par = res["parallel"]
    assert par["k"] >= 1 and positive(par["efficiency"]) and positive(par["single_median"])
    for v, row in res["latency"]["variants"].items():
        assert all(positive(x) for x in row["latency_ms_per_image"] + row["latency_ms_batch1"]), v
    proj = res["projection"]
    assert positive(proj["trainer_wall_seconds"]) and positive(proj["floor_seconds"])
    assert proj["trainer_wall_seconds"] > proj["floor_seconds"] and positive(proj["fused_wall_seconds"])
    # make run's 40 pairs outnumber this box's trial slots: the new default (--fuse-seeds auto) is the fused grid
    assert proj["auto_fuses"] and proj["default_wall_seconds"] == proj["fused_wall_seconds"]
    assert proj["default_speedup"] == pytest.approx(proj["trainer_wall_seconds"] / proj["fused_wall_seconds"])
    ratio = proj["default_speedup"]  # which way it goes on a loaded box's quick run is not asserted
    assert f"**{ratio:.2f}x** faster" in table or f"**{1 / ratio:.2f}x** slower" in table
    assert "**`make run` (40 (variant, seed) pairs" in table and "(old default: one trial per" in table
    for v in ("base", "v2"):  # part 7: every route timed, per model-step
        row = res["steps"]["variants"][v]
        for key in ("plain_ms_per_step", "eager_ms_per_step", "fused_ms_per_step", "trainer_speedup", "fused_speedup"):
            assert positive(row[key]), (v, key, row[key])
    # Part 8 times a state that really holds subnormals; the unflushed routes keep them while timed, a flushed
    # step writes them back as zeros.
    late = res["late"]
    assert late["subnormal_parameters"] > 1000 and late["subnormal_exp_avg"] > 1000
    assert late["subnormal_after_timing"]["eager, not flushed"][0] > 1000
    assert late["subnormal_after_timing"]["eager"][0] < late["subnormal_parameters"] / 10
    for key in ("plain_ms_per_step", "eager_ms_per_step", "eager, not flushed_ms_per_step", "flush_speedup"):
        assert positive(late[key]), key
    assert all(positive(x) for x in late["latency"]["not_flushed"]["latency_ms_per_image"])


def made_up_steps(fused_ms: float) -> dict:
    """Part 7's figures for two variants: the default step at 10 ms, the fused one at `fused_ms` per model."""
    row = {"trainer_route": "compiled", "plain_ms_per_step": 20.0, "eager_ms_per_step": 12.0,
           "compiled_ms_per_step": 10.0, "fused_ms_per_step": fused_ms, "compile_seconds": {"compiled": 30.0}}
    return {"trainer_route": "compiled", "variants": {"base": row, "v6": row}}


def test_projection_uses_the_sweeps_fuse_seeds_auto_choice():
    """The new default fuses make run's 40 (variant, seed) pairs when they outnumber the trial slots, and then
    pays Ray's per-trial start for 2 fused trials instead of 10; with 64 slots it keeps one trial per pair."""
    from bench.project import project
    orch = {"fixed_seconds": 10.0, "late_start_seconds": 5.0, "outside_epochs_extra_seconds": 1.0,
            "daemon_cores": 0.0}
    res = {"steps": made_up_steps(fused_ms=5.0), "orchestration": orch}
    two = project(res, k=2)
    steps_s = 2 * 5 * 10 * 17_500 / 2  # 2 variants x 5 seeds x 10 epochs x 17,500 steps, 2 trials at once
    assert two["auto_fuses"] and two["pairs"] == 40 and two["slots"] == 2 and two["partial_grid"]
    assert two["trainer_wall_seconds"] == pytest.approx(steps_s * 10e-3 + 2 * 30 / 2 + 10 + (10 * 5 + 10 * 1) / 2)
    assert two["fused_wall_seconds"] == pytest.approx(steps_s * 5e-3 + 10 + (2 * 5 + 10 * 1) / 2)
    assert two["default_wall_seconds"] == two["fused_wall_seconds"] and two["default_speedup"] > 1.9
    wide = project(res, k=64)
    assert not wide["auto_fuses"] and wide["default_wall_seconds"] == wide["trainer_wall_seconds"]
    assert wide["default_speedup"] == 1.0
    # Fused seeds slower than the default step: the projection says the new default loses, it does not hide it.
    assert project({"steps": made_up_steps(fused_ms=25.0)}, k=2)["default_speedup"] < 1


@pytest.mark.slow
def test_orchestration_overhead_runs_the_same_grid_through_ray_and_plain_processes(tiny_cifar, tmp_path):
    """Real Ray Tune + MLflow (a temp SQLite store) against plain train() in spawned processes."""
    from bench import cli
    from bench.routes import TrainConfig
    from bench.sharing import bench_orchestration
    from bench.table import render
    args = cli.parse_args(["--quick", "--data-dir", str(tiny_cifar), "--parallel-k", "1", "--device", "cpu"])  # 1 trial
    orch = bench_orchestration(args, cli.resolve(args), TrainConfig(data_dir=str(tiny_cifar)), print, earlier={})
    assert positive(orch["plain_wall_seconds"]) and positive(orch["ray_wall_seconds"])
    assert len(orch["plain_trial_seconds"]) == 1 and positive(orch["plain_trial_seconds"][0])
    assert 0 < orch["ray_fit_seconds"] <= orch["ray_wall_seconds"]
    # The Ray side is read back from the trial's MLflow run: it trained and logged its epochs.
    assert len(orch["ray_trials"]) == 1 and positive(orch["ray_trials"][0]["train_images_per_second"])
    assert positive(orch["ray_trials"][0]["epoch_seconds"]) and positive(orch["plain_trials"][0]["epoch_seconds"])
    assert positive(orch["plain_load"]["machine_cores"]) and positive(orch["ray_load"]["ours_cores"])
    env = {"device": "cpu", "device_label": "cpu (test)", "quick": True, "time": "t", "torch": "x", "cores": 2,
           "threads": 1, "data": "d"}
    table = render({"environment": env, "orchestration": orch})
    assert "## 4. Orchestration overhead (cpu (test))" in table and "orchestration overhead <= 5%" in table


def test_only_routes_imports_the_trainer_and_the_sweep():
    """bench/routes.py is the benchmark's one door to orchestrator.training and orchestrator.sweep: a change of the
    trainer's API is adapted in that file alone."""
    import ast
    from pathlib import Path
    doors = set()
    for path in Path(bench.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m.startswith(("orchestrator.training", "orchestrator.sweep")) for m in modules):
                doors.add(path.name)
    assert doors == {"routes.py"}


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert bench.main(["--variants", "base,nope", "--data-dir", str(tmp_path)]) == 2
    assert "unknown variant nope" in capsys.readouterr().err
    assert bench.main(["--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench:") and "\n" not in err


def test_data_pipeline_bench_runs_and_reports_ratio(tiny_cifar, tmp_path, capsys):
    from bench import pipeline  # python -m bench.pipeline: the pipeline part alone
    assert pipeline.main(["--data-dir", str(tiny_cifar), "--seconds", "0.05", "--rounds", "1",
                          "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "speed-up:" in out and "Base training step" in out
    res = json.loads((tmp_path / "bench-parts.json").read_text())["pipeline"]
    assert res["samples_per_epoch"] == 160 + 4 * 16  # all 160 tiny images + a copy of the four focus classes'
    assert positive(res["speedup"]) and positive(res["base_step_ms"]) and positive(res["data_share"])
    assert pipeline.main(["--data-dir", str(tmp_path / "none")]) == 2
