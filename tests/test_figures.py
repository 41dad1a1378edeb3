"""The report's figures say what they show: the paper's points labelled and joined to ours, a variant a panel
cannot place named on it with the reason, point labels that do not overlap, and another protocol's caveat in
every title."""
import itertools

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from orchestrator.analysis import figures, report
from orchestrator.analysis.study import HISTORY_COLUMNS, TRIAL_COLUMNS, Study
from orchestrator.sweep import records

# variant: per seed (accuracy %, ms/image batch 4, ms batch 1, machine). V6 and Alpha nearly coincide on the
# batch-1 panel (as in the published grid); V5's seeds ran on two CPU models, so its latencies are never averaged.
TRIALS = {"base": [(70.2, 0.39, 0.47, "cpu A"), (70.7, 0.40, 0.46, "cpu A")],
          "v2": [(71.0, 0.67, 0.51, "cpu A"), (71.1, 0.66, 0.51, "cpu A")],
          "v5": [(66.0, 1.56, 1.26, "cpu A"), (66.5, 0.63, 1.18, "cpu B")],
          "v6": [(77.2, 1.19, 0.95, "cpu A"), (77.3, 1.18, 0.96, "cpu A")],
          "alpha": [(77.3, 1.37, 0.96, "cpu A"), (77.4, 1.36, 0.96, "cpu A")]}


def study(protocol: dict | None = None) -> Study:
    rows = [{"run_id": f"{v}{k}", "run_name": f"{v}-seed{k}", "status": "FINISHED", "start_time": k, "variant": v,
             "seed": k, "failure_reason": "", "final_val_accuracy": acc / 100, "latency_ms_per_image": lat4,
             "latency_ms_batch1": lat1, "size_mb": 0.52, "param_count": 136380, "latency_hardware": machine}
            for v, seeds in TRIALS.items() for k, (acc, lat4, lat1, machine) in enumerate(seeds)]
    return Study("made up", [], list(TRIALS), [0, 1], pd.DataFrame(rows, columns=TRIAL_COLUMNS),
                 pd.DataFrame(columns=HISTORY_COLUMNS), protocol=protocol or records.paper_protocol())


@pytest.fixture(scope="module")
def latency_figure(tmp_path_factory):
    s = study()
    return figures.accuracy_vs_latency_figure(s.summary, s.paper, tmp_path_factory.mktemp("f") / "a.png")


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_the_papers_points_are_labelled_and_joined_to_ours(latency_figure):
    batch4 = latency_figure.axes[0]
    for name in ("Base", "V2", "V5", "V6", "Alpha"):
        assert f"{name} paper" in _texts(batch4), name
    joins = [line for line in batch4.get_lines() if line.get_linestyle() == ":"]
    assert len(joins) == 4  # Base, V2, V6, Alpha: V5 has no point of ours on this panel to join to
    for line in joins:  # each runs from one of our points to the paper's point of that variant
        (x0, x1), (y0, y1) = line.get_data()
        assert any((x1, y1) == pytest.approx((study().paper.loc[v, "latency_ms_per_image"],
                                               study().paper.loc[v, "val_accuracy_pct"])) for v in TRIALS)


def test_a_variant_left_out_of_a_panel_is_named_there_with_the_reason(latency_figure):
    for ax in latency_figure.axes:
        notes = [t for t in _texts(ax) if t.startswith("Not shown")]
        assert notes == ["Not shown: V5 (latencies from 2 machines, never averaged)"]
        assert "V5" not in [t for t in _texts(ax) if not t.endswith("paper") and not t.startswith("Not shown")]


def test_point_labels_do_not_overlap(latency_figure):
    renderer = FigureCanvasAgg(latency_figure).get_renderer()  # the figure is closed: a canvas of its own
    for ax in latency_figure.axes:
        labels = [t for t in ax.texts if not t.get_text().startswith("Not shown")]
        boxes = [figures.text_box(t, renderer) for t in labels]
        for (a, ta), (b, tb) in itertools.combinations(zip(boxes, labels), 2):
            assert not a.overlaps(b), (ta.get_text(), tb.get_text())


def test_spread_labels_separates_labels_placed_on_top_of_each_other(tmp_path):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    texts = [figures.label_point(ax, name, (0.5, 0.5)) for name in ("V6", "Alpha", "V2")]  # the same point
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert figures.text_box(texts[0], renderer).overlaps(figures.text_box(texts[1], renderer))
    figures.spread_labels(ax, texts)
    boxes = [figures.text_box(t, renderer) for t in texts]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    plt.close(fig)


def test_another_protocols_figures_carry_the_caveat_in_their_titles(tmp_path):
    quick = study({**records.paper_protocol(), "epochs": 2, "subset_per_class": 500})
    caveat = report.figure_caveat(quick)
    assert "not the paper's protocol" in caveat and "epochs 2 (paper 10)" in caveat
    s = quick.summary
    fig = figures.accuracy_vs_latency_figure(s, quick.paper, tmp_path / "a.png", caveat)
    assert "not the paper's protocol" in fig._suptitle.get_text()
    curves = pd.DataFrame([("base", f"{split}_accuracy", epoch, 0.5 + 0.1 * epoch, 0.01, 2)
                           for split in ("train", "val") for epoch in (1, 2)],
                          columns=["variant", "metric", "epoch", "mean", "std", "n"])
    fig = figures.curves_figure(curves, ["base"], quick.paper, "accuracy", tmp_path / "c.png", caveat)
    assert "epochs 2 (paper 10)" in fig._suptitle.get_text().replace("\n", " ")
    fig = figures.accuracy_vs_size_figure(s, quick.paper, tmp_path / "b.png", caveat)
    assert "epochs 2 (paper 10)" in fig._suptitle.get_text().replace("\n", " ")
    assert report.figure_caveat(study()) is None  # the paper's protocol: no caveat
    fig = figures.accuracy_vs_size_figure(s, quick.paper, tmp_path / "d.png", report.figure_caveat(study()))
    assert "protocol" not in fig._suptitle.get_text()
