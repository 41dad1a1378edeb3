"""The report's figures: per-epoch curves with ± std bands (the paper's Figures 6–9) and accuracy against
inference time (Figure 10) and size, each with error bars over seeds. PNG files, drawn headless."""
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report runs at the end of a sweep, often on a server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from models.reference import label  # noqa: E402


def _colors(variants: list[str]) -> dict[str, tuple]:
    return {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(variants)}


def _title(text: str, caveat: str | None, width: int = 100) -> str:
    """A figure's title, with the caveat (e.g. not the paper's protocol) on lines of its own, wrapped to fit."""
    return text if not caveat else "\n".join([text, *textwrap.wrap(caveat, width)])


def _save(fig, path: Path, labels: list[tuple] = ()):
    """Lay out, then spread each axes' point labels (`labels`: (ax, texts) pairs) where they finally sit, save."""
    fig.tight_layout()
    for ax, texts in labels:
        ax.get_xlim(), ax.get_ylim()  # settle autoscaling first: the labels' places depend on the limits
        spread_labels(ax, texts)
    fig.savefig(path, dpi=120)
    plt.close(fig)  # the Figure object stays readable (tests inspect its artists)
    return fig


def curves_figure(curves: pd.DataFrame, variants: list[str], paper: pd.DataFrame, kind: str, path: Path,
                  caveat: str | None = None):
    """Figures 6–9: train and validation `kind` (loss | accuracy) per epoch, mean ± std band, per variant."""
    scale, ylabel = (100.0, "Accuracy (%)") if kind == "accuracy" else (1.0, "Cross-entropy loss")
    shown = [v for v in variants if v in set(curves["variant"])]
    n_panels = len(shown) + 1
    ncols = 3 if n_panels > 4 else n_panels
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    axes = axes.ravel()
    colors = _colors(variants)

    def band(ax, v, split, color, legend, style="-"):
        c = curves[(curves.variant == v) & (curves.metric == f"{split}_{kind}")].sort_values("epoch")
        mean, std = scale * c["mean"], scale * c["std"].fillna(0.0)  # n=1: no spread to draw
        ax.plot(c["epoch"], mean, style, color=color, marker="o", ms=3, label=legend)
        ax.fill_between(c["epoch"], mean - std, mean + std, color=color, alpha=0.2, linewidth=0)

    for ax, v in zip(axes, shown):
        band(ax, v, "train", "tab:blue", "train")
        band(ax, v, "val", "tab:orange", "validation")
        n = curves.loc[curves.variant == v, "n"].max()
        ax.set_title(f"{label(v, paper)} (n={n})")
    overlay = axes[len(shown)]
    for v in shown:
        band(overlay, v, "val", colors[v], label(v, paper))
    overlay.set_title("Validation, all variants")
    for ax in axes[:n_panels]:
        ax.set(xlabel="Epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[n_panels:]:
        ax.axis("off")
    fig.suptitle(_title(f"Training and validation {kind} per epoch (mean ± std over seeds)", caveat))
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- point labels
def _overlap(a, b, pad: float) -> tuple[float, float]:
    """How far two display-space boxes overlap in x and y (<= 0: they don't)."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) + pad, min(a.y1, b.y1) - max(a.y0, b.y0) + pad)


def text_box(annotation, renderer):
    """The display box of an annotation's text alone (its own extent includes the leader line to the point)."""
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def spread_labels(ax, texts: list, iterations: int = 200, pad_px: float = 2.0) -> None:
    """Move overlapping point labels (annotations in offset points) apart vertically until none overlap: a
    small repulsion in the way of adjustText, without the dependency. Each step pushes the two labels of an
    overlapping pair apart by half their overlap each; a leader line keeps a moved label tied to its point."""
    if len(texts) < 2:
        return
    renderer = ax.figure.canvas.get_renderer()
    px_to_pt = 72.0 / ax.figure.dpi
    for _ in range(iterations):
        boxes = [text_box(t, renderer) for t in texts]
        moved = False
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                dx, dy = _overlap(boxes[i], boxes[j], pad_px)
                if dx <= 0 or dy <= 0:
                    continue
                lower, upper = (i, j) if boxes[i].y0 <= boxes[j].y0 else (j, i)
                for k, sign in ((lower, -1), (upper, 1)):
                    x, y = texts[k].xyann
                    texts[k].xyann = (x, y + sign * dy / 2 * px_to_pt)
                    boxes[k] = text_box(texts[k], renderer)
                moved = True
        if not moved:
            return


def label_point(ax, text: str, xy: tuple[float, float], **kw):
    """A point's label, a little up and right of it, tied to it by a thin line once spread_labels moves it."""
    return ax.annotate(text, xy, fontsize=8, xytext=(4, 4), textcoords="offset points",
                       arrowprops=dict(arrowstyle="-", lw=0.5, color="0.6", shrinkA=0, shrinkB=2), **kw)


# ---------------------------------------------------------------------------------------- accuracy vs x
def _left_out(s: pd.DataFrame, x: str, paper: pd.DataFrame) -> list[str]:
    """"V5 (latencies from 2 machines)" for each variant in `s` (those the panel cannot place), with the reason."""
    notes = []
    for v in s.index:
        if s.loc[v, "n"] == 0:
            why = "no finished trial"
        elif x.startswith("latency") and s.loc[v, "latency_machines"] > 1:
            why = f"latencies from {s.loc[v, 'latency_machines']} machines, never averaged"
        else:
            why = "not measured"
        notes.append(f"{label(v, paper)} ({why})")
    return notes


def _paper_points(ax, s: pd.DataFrame, paper: pd.DataFrame, x: str, paper_x: str, colors: dict, placed) -> list:
    """The paper's points: black crosses, each labelled and joined to ours for the same variant (where `placed`)
    by a dotted line in that variant's colour; returns the labels. A study with architectures of its own (a
    search's re-validated specs) gets all eight of the paper's points, the landscape they are measured against;
    otherwise those of the variants it ran."""
    texts = []
    own = any(v not in paper.index for v in s.index)
    ref = [v for v in (paper.index if own else s.index) if v in paper.index and not pd.isna(paper.loc[v, paper_x])]
    ax.scatter([paper.loc[v, paper_x] for v in ref], [paper.loc[v, "val_accuracy_pct"] for v in ref], marker="x",
               color="black", zorder=3, label="paper (1 run, its hardware)" if paper_x.startswith("latency")
               else "paper (1 run)")
    for v in ref:
        px, py = paper.loc[v, paper_x], paper.loc[v, "val_accuracy_pct"]
        if placed.get(v, False):
            ax.plot([s.loc[v, x], px], [s.loc[v, "val_accuracy_pct_mean"], py], ":", color=colors[v], lw=1)
        texts.append(label_point(ax, f"{label(v, paper)} paper", (px, py), color="0.35", fontstyle="italic"))
    return texts


def _scatter(ax, s, paper, x, xerr, xlabel, paper_x=None):
    colors = _colors(list(s.index))
    placed = s[x].notna() & s["val_accuracy_pct_mean"].notna()
    texts = []
    for v in s.index[placed]:
        ax.errorbar(s.loc[v, x], s.loc[v, "val_accuracy_pct_mean"], xerr=s[xerr].fillna(0)[v] if xerr else None,
                    yerr=s["val_accuracy_pct_std"].fillna(0)[v], fmt="o", color=colors[v], capsize=3,
                    label=f"{label(v, paper)} (n={s.loc[v, 'n']})")
        texts.append(label_point(ax, label(v, paper), (s.loc[v, x], s.loc[v, "val_accuracy_pct_mean"])))
    if paper_x is not None:
        texts += _paper_points(ax, s, paper, x, paper_x, colors, placed)
    left_out = _left_out(s[~placed], x, paper)
    if left_out:  # below the axis label, so it never hides a point
        ax.annotate("Not shown: " + "; ".join(left_out), (0, 0), xycoords="axes fraction", xytext=(0, -42),
                    textcoords="offset points", fontsize=7, color="tab:red", va="top")
    ax.set(xlabel=xlabel, ylabel="Validation accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when no variant finished
        ax.legend(fontsize=7)
    return texts


def accuracy_vs_latency_figure(s: pd.DataFrame, paper: pd.DataFrame, path: Path, caveat: str | None = None,
                               where: str | None = None):
    """Figure 10 with error bars both ways (std over seeds), for both latency definitions; `where` says where
    the latencies were measured (e.g. "one pass on <machine>")."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5.2))
    texts_a = _scatter(a, s, paper, "latency_ms_per_image_mean", "latency_ms_per_image_std",
                       "Inference time (ms per image, batches of 4)", paper_x="latency_ms_per_image")
    texts_b = _scatter(b, s, paper, "latency_ms_batch1_mean", "latency_ms_batch1_std",
                       "Inference time (ms, batch of 1)")
    title = "Validation accuracy vs inference time (mean ± std over seeds)" + (f"; latency: {where}" if where else "")
    fig.suptitle(_title(title, caveat))
    return _save(fig, path, [(a, texts_a), (b, texts_b)])


def int8_accuracy_vs_bytes_figure(summary: pd.DataFrame, paper: pd.DataFrame, path: Path,
                                  caveat: str | None = None):
    """The deployment view: int8 validation accuracy against the int8 file's size, error bars both ways."""
    colors = _colors(list(summary.index))
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    texts = []
    for v in summary.index:
        if pd.isna(summary.loc[v, "int8_bytes_mean"]):
            continue
        x, y = summary.loc[v, "int8_bytes_mean"] / 1024, 100.0 * summary.loc[v, "int8_val_accuracy_mean"]
        ax.errorbar(x, y, xerr=np.nan_to_num(summary.loc[v, "int8_bytes_std"] / 1024),
                    yerr=np.nan_to_num(100.0 * summary.loc[v, "int8_val_accuracy_std"]), fmt="o", color=colors[v],
                    capsize=3, label=f"{label(v, paper)} (n={summary.loc[v, 'n_exported']})")
        texts.append(label_point(ax, label(v, paper), (x, y)))
    ax.set(xlabel="int8 ONNX file (KB)", ylabel="int8 validation accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_title(_title("int8 accuracy vs int8 file size (mean ± std over seeds)", caveat, 60))
    return _save(fig, path, [(ax, texts)])


def accuracy_vs_size_figure(s: pd.DataFrame, paper: pd.DataFrame, path: Path, caveat: str | None = None):
    """Accuracy against the paper's size (MB, parameters and buffers) and against the parameter count."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5.2))
    texts_a = _scatter(a, s, paper, "size_mb", None, "Model size (MB)", paper_x="size_mb")
    texts_b = _scatter(b, s, paper, "params", None, "Parameters", paper_x="params")
    fig.suptitle(_title("Validation accuracy vs model size and parameters (mean ± std over seeds)", caveat))
    return _save(fig, path, [(a, texts_a), (b, texts_b)])


# ------------------------------------------------------------------------------------------ ranking stability
def ranking_stability_figure(stability: pd.DataFrame, path: Path, caveat: str | None = None):
    """Each variant's rank (rows, in mean-rank order) within each seed (columns) as a heatmap, 1 = most accurate;
    a cell that holds the variant's mean rank is outlined, and the right margin says in how many seeds it does."""
    seeds = [c for c in stability.columns if c.startswith("seed_")]  # not seeds_compared, seeds_held
    ranks = stability[seeds].to_numpy(dtype=float)
    n_variants = len(stability)
    fig, ax = plt.subplots(figsize=(max(6.5, 2.6 + 0.9 * len(seeds)), max(3.0, 1.4 + 0.42 * n_variants)))
    ax.imshow(ranks, cmap="viridis_r", vmin=1, vmax=max(n_variants, 2), aspect="auto")
    margin = blended_transform_factory(ax.transAxes, ax.transData)
    for i in range(n_variants):
        mean_rank = stability["mean_rank"].iloc[i]
        for j in range(len(seeds)):
            held = ranks[i, j] == mean_rank
            ax.text(j, i, f"{ranks[i, j]:.0f}", ha="center", va="center", fontsize=9,
                    color="white" if ranks[i, j] > (n_variants + 1) / 2 else "black",
                    fontweight="bold" if held else "normal")
            if held:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        held_seeds = stability["seeds_held"].iloc[i]
        ax.text(1.03, i, "" if pd.isna(held_seeds) else f"holds it in {held_seeds:.0f}/{len(seeds)}",
                transform=margin, va="center", fontsize=8)
    ax.set_xticks(range(len(seeds)), [f"seed {c[5:]}" for c in seeds])
    ax.set_yticks(range(n_variants), [f"{m} (mean rank {r:.0f})" for m, r in zip(stability["model"],
                                                                                   stability["mean_rank"])])
    ax.set_title(_title("Rank of each variant within each seed (1 = most accurate;\noutlined: the variant's rank "
                        "in the mean ranking)", caveat, 70), fontsize=10)
    return _save(fig, path)
