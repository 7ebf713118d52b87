"""``RUN/curves.png``: the run's curves from its ``log.jsonl`` (loss, learning rate, the
objective's health, the online k-NN), redrawn at each picture epoch and by the report."""
from __future__ import annotations

from pathlib import Path

from sslvit.files import save_figure_atomic
from sslvit.report.runlog import health_keys, read_log, run_caption, series

DPI = 100
PANEL_IN = (4.2, 2.6)  # inches per panel
TITLES = {"teacher_entropy": "teacher entropy (nats; 0: collapsed, log K: uniform)",
          "kl": "KL(teacher || student)", "mlm_acc": "masked-token accuracy (mlm_acc)"}


def curve_panels(records: list[dict]) -> list[tuple[str, str, list[tuple[str, list, list]]]]:
    """-> (title, x label, [(legend, xs, ys), ...]) per panel, only those the log has data for."""
    panels = [("loss", "step", [("per logged step", *series(records, "loss")),
                                ("epoch mean", *series(records, "epoch_loss"))]),
              ("learning rate", "step", [("lr", *series(records, "lr"))])]
    for key in health_keys(records):
        prefix, _, name = key.rpartition(".")
        panels.append(((f"{prefix}: " if prefix else "") + TITLES[name], "step", [(key, *series(records, key))]))
    panels.append(("online k-NN top-1 % (held-out labelled data)", "epoch",
                   [("top-1 %", *series(records, "knn_top1", x="epoch"))]))
    return [(t, x, [c for c in curves if c[1]]) for t, x, curves in panels if any(c[1] for c in curves)]


def curves_figure(records: list[dict], caption: str):
    """A matplotlib ``Figure`` of the panels, two per row, ``caption`` above."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(records) or [("no logged step yet", "step", [])]
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(PANEL_IN[0] * cols, PANEL_IN[1] * rows + 0.4), dpi=DPI, facecolor="white",
                 layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(caption, fontsize=10, x=0.01, ha="left")
    for i, (title, xlabel, curves) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, xs, ys in curves:
            ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs are counts
        xs = {x for _, points, _ in curves for x in points}
        if len(xs) == 1:  # one point (a 1-epoch k-NN): a range around it, not a sub-integer axis
            ax.set_xlim(min(xs) - 1, min(xs) + 1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=7)
    return fig


def save_curves(run_dir: Path) -> Path:
    """Draw ``RUN/curves.png`` from ``RUN/log.jsonl``; -> its path."""
    run_dir = Path(run_dir)
    records = read_log(run_dir)
    path = run_dir / "curves.png"
    save_figure_atomic(curves_figure(records, run_caption(run_dir, records, "training curves")), path, DPI)
    return path
