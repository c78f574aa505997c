"""The charts of the run report, drawn with matplotlib and returned as `data:` URIs.

The report is one file a person opens from a run directory, a mail or an artifact store, often on a machine
with no network: every chart is a PNG embedded in the page, never a link. Figures are built with
`matplotlib.figure.Figure` on an Agg canvas directly, so nothing touches pyplot's global state or needs a
display, and rendering from a worker thread is safe. PNG metadata is dropped so that the same
data gives the same bytes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

WIDTH_IN = 9.0
DPI = 100
# The colours of the stylesheet, so charts and tables read as one page.
OK, FAILED, NOT_RUN, ACCENT = "#2f7d4a", "#b3261e", "#9e9e9e", "#1f5fa8"
PALETTE = ("#1f5fa8", "#e07b00", "#2f7d4a", "#8e44ad", "#b3261e", "#00838f", "#6d4c41", "#c2185b")


def to_data_uri(fig: Figure) -> str:
    """Render `fig` as a PNG `data:` URI: the page needs no file next to it and makes no request."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(height_in: float, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend the process selected
    axes = np.atleast_1d(fig.subplots(1, ncols, squeeze=False)[0])
    for ax in axes:
        ax.grid(True, axis="both", color="#e6e6e6", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def _legend_outside(ax) -> None:
    """A legend right of the plot, never over the data (constrained layout makes room for it)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def step_timings(steps: Sequence[tuple[str, float | None, str]]) -> str:
    """Horizontal bars of seconds per step (flow order, top to bottom), coloured by state."""
    colours = {"ok": OK, "failed": FAILED}
    fig, (ax,) = _figure(0.45 * len(steps) + 1.0)
    names = [name for name, _, _ in steps]
    seconds = [s or 0.0 for _, s, _ in steps]
    y = np.arange(len(steps))
    ax.barh(y, seconds, color=[colours.get(state, NOT_RUN) for _, _, state in steps])
    for yi, (_, s, state) in zip(y, steps, strict=True):
        label = f"{s:,.1f} s" if s is not None else "not timed" if state == "ok" else state
        ax.annotate(label, (seconds[yi], yi), xytext=(4, 0), textcoords="offset points", va="center")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(seconds, default=0.0) * 1.15 or 1.0)
    ax.set_title("Step timings")
    return to_data_uri(fig)


def event_volume(daily: pd.DataFrame, last_day: pd.Timestamp, trailing_mean: float | None) -> str:
    """Stacked bars of events per day and type; the run's newest day in the accent colour's outline."""
    fig, (ax,) = _figure(3.4)
    bottom = np.zeros(len(daily))
    days = daily.index.to_pydatetime()
    width = 0.8 if len(daily) < 200 else 1.0
    for i, column in enumerate(daily.columns):
        values = daily[column].to_numpy(dtype=float)
        ax.bar(days, values, bottom=bottom, width=width, color=PALETTE[i % len(PALETTE)], label=column)
        bottom += values
    if last_day in daily.index:
        total = float(daily.loc[last_day].sum())
        ax.bar([last_day.to_pydatetime()], [total], width=width, fill=False, edgecolor="black", linewidth=1.5)
    if trailing_mean is not None:
        ax.axhline(trailing_mean, color="black", linestyle="--", linewidth=1, label="trailing 7-day mean")
    ax.set_ylabel("events per day")
    ax.set_title(f"Events per day up to {last_day.date()} (outlined: the run's newest day)")
    _legend_outside(ax)
    fig.autofmt_xdate()
    return to_data_uri(fig)


def training_curves(history: pd.DataFrame, tasks: Sequence[str], best_epoch: int | None) -> str:
    """Train and validation loss per epoch: one panel per task, and the weighted total."""
    panels = [(t, f"train_{t}", f"val_{t}") for t in tasks] + [("total", "train_loss", "val_loss")]
    fig, axes = _figure(3.0, ncols=len(panels))
    for ax, (title, train, val) in zip(axes, panels, strict=True):
        for column, colour, label in ((train, ACCENT, "train"), (val, "#e07b00", "validation")):
            if column in history:
                ax.plot(history["epoch"], history[column], marker="o", color=colour, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="black", linestyle=":", linewidth=1, label="best epoch")
        ax.set_title(f"{title} loss")
        ax.set_xlabel("epoch")
        ax.set_xlim(history["epoch"].min() - 0.5, history["epoch"].max() + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10, integer=True, min_n_ticks=1))
    axes[0].set_ylabel("loss")
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small", frameon=False
    )
    return to_data_uri(fig)


def gate_weights(gates: Mapping[str, Sequence[float]], epoch: int) -> str:
    """Grouped bars: each task's mean gate weight per expert (a task leaning on one expert stands out)."""
    tasks = list(gates)
    n_experts = max(len(w) for w in gates.values())
    fig, (ax,) = _figure(3.0)
    width = 0.8 / len(tasks)
    x = np.arange(n_experts)
    for i, task in enumerate(tasks):
        weights = list(gates[task])
        ax.bar(
            x[: len(weights)] + i * width, weights, width=width, color=PALETTE[i % len(PALETTE)], label=task
        )
    ax.axhline(1.0 / n_experts, color="black", linestyle=":", linewidth=1, label="uniform")
    ax.set_xticks(x + width * (len(tasks) - 1) / 2, [f"expert {e}" for e in range(n_experts)])
    ax.set_ylabel("mean gate weight")
    ax.set_title(f"Gate weights per expert (epoch {epoch})")
    _legend_outside(ax)
    return to_data_uri(fig)


def histograms(hists: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """One panel per column: counts over bin edges, as computed by the warehouse."""
    fig, axes = _figure(2.8, ncols=len(hists))
    for i, (ax, (name, (edges, counts))) in enumerate(zip(axes, hists.items(), strict=True)):
        widths = np.diff(edges)
        ax.bar(edges[:-1], counts, width=widths, align="edge", color=PALETTE[i % len(PALETTE)])
        ax.set_title(name)
        ax.set_xlabel("value")
    axes[0].set_ylabel("rows")
    return to_data_uri(fig)
