"""The report's figures: per-epoch curves with ± std bands (the paper's Figures 6–9) and accuracy against
inference time (Figure 10) and size, each with error bars over seeds. PNG files, drawn headless."""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report runs at the end of a sweep, often on a server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from models.reference import label  # noqa: E402


def _colors(variants: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {v: cmap(i % 10) for i, v in enumerate(variants)}


def curves_figure(curves: pd.DataFrame, variants: list[str], paper: pd.DataFrame, kind: str, path: Path):
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
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[n_panels:]:
        ax.axis("off")
    fig.suptitle(f"Training and validation {kind} per epoch (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scatter(ax, s, paper, x, xerr, xlabel, paper_x=None):
    colors = _colors(list(s.index))
    for v in s.index:
        if pd.isna(s.loc[v, x]) or pd.isna(s.loc[v, "val_accuracy_pct_mean"]):
            continue
        ax.errorbar(s.loc[v, x], s.loc[v, "val_accuracy_pct_mean"], xerr=s[xerr].fillna(0)[v] if xerr else None,
                    yerr=s["val_accuracy_pct_std"].fillna(0)[v], fmt="o", color=colors[v], capsize=3,
                    label=f"{label(v, paper)} (n={s.loc[v, 'n']})")
        ax.annotate(label(v, paper), (s.loc[v, x], s.loc[v, "val_accuracy_pct_mean"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    if paper_x is not None:
        ref = paper.loc[[v for v in s.index if v in paper.index]]
        ax.scatter(ref[paper_x], ref["val_accuracy_pct"], marker="x", color="black",
                   label="paper (1 run, its hardware)" if paper_x.startswith("latency") else "paper (1 run)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Validation accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when no variant finished
        ax.legend(fontsize=7)


def accuracy_vs_latency_figure(s: pd.DataFrame, paper: pd.DataFrame, path: Path):
    """Figure 10 with error bars both ways (std over seeds), for both latency definitions."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    _scatter(a, s, paper, "latency_ms_per_image_mean", "latency_ms_per_image_std",
             "Inference time (ms per image, batches of 4)", paper_x="latency_ms_per_image")
    _scatter(b, s, paper, "latency_ms_batch1_mean", "latency_ms_batch1_std", "Inference time (ms, batch of 1)")
    fig.suptitle("Validation accuracy vs inference time (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def int8_accuracy_vs_bytes_figure(summary: pd.DataFrame, paper: pd.DataFrame, path: Path):
    """The deployment view: int8 validation accuracy against the int8 file's size, error bars both ways."""
    colors = _colors(list(summary.index))
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for v in summary.index:
        if pd.isna(summary.loc[v, "int8_bytes_mean"]):
            continue
        x, y = summary.loc[v, "int8_bytes_mean"] / 1024, 100.0 * summary.loc[v, "int8_val_accuracy_mean"]
        ax.errorbar(x, y, xerr=np.nan_to_num(summary.loc[v, "int8_bytes_std"] / 1024),
                    yerr=np.nan_to_num(100.0 * summary.loc[v, "int8_val_accuracy_std"]), fmt="o", color=colors[v],
                    capsize=3, label=f"{label(v, paper)} (n={summary.loc[v, 'n_exported']})")
        ax.annotate(label(v, paper), (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("int8 ONNX file (KB)")
    ax.set_ylabel("int8 validation accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_title("int8 accuracy vs int8 file size (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_vs_size_figure(s: pd.DataFrame, paper: pd.DataFrame, path: Path):
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    _scatter(ax, s, paper, "size_mb", None, "Model size (MB)", paper_x="size_mb")
    ax.set_title("Validation accuracy vs model size (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
