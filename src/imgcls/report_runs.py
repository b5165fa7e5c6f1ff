"""The runs ``imgcls-report`` reads: overrides, status, metrics and curves of each run dir; the
tables' formatting; the val/acc curves plot. Run dirs are read through ``imgcls.run_dir``."""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.run_dir import CONFIG_FILE, OVERRIDES_FILE, Override, RunDir, find_run_dirs

#: overrides that say how a run was started, not what it computed
IGNORED_OVERRIDES = ("resume",)
METRIC_ORDER = (
    "val/acc_best",
    "val/acc",
    "val/loss",
    "test/acc",
    "test/loss",
    "train/acc",
    "train/loss",
)
CURVE_TAGS = ("val/acc", "train/loss")
CURVES_PNG = "val_acc_curves.png"
ABSENT = "—"  # an override a run did not set


class ReportError(Exception):
    """A problem with the report's input, printed as one line (exit code 2)."""


# ---------------------------------------------------------------------------------- runs
@dataclass
class Run:
    path: Path
    name: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    status: str = "unknown"
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    epochs: int | None = None
    best_epoch: int | None = None
    wall_time_s: float | None = None
    repeat: tuple[str, ...] = ()  # its seed / fold values


def read_overrides(run: RunDir) -> dict[str, str]:
    """``key -> value`` of the run's command-line overrides (``~key`` deletes: ``<deleted>``)."""
    overrides = {}
    for override in map(Override.parse, run.overrides()):
        value = override.value or ""
        if override.deletes:
            value = value or "<deleted>"
        if override.key not in IGNORED_OVERRIDES:
            overrides[override.key] = value
    return overrides


def csv_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of ``CURVE_TAGS`` from a CSVLogger's ``metrics.csv``."""
    curves: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.rglob("metrics.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                for tag in CURVE_TAGS:
                    if row.get(tag):
                        curves.setdefault(tag, {})[epoch] = float(row[tag])
    return {tag: sorted(values.items()) for tag, values in curves.items()}


def tensorboard_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of ``CURVE_TAGS`` from TensorBoard event files (steps mapped to epochs)."""
    event_dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")})
    if not event_dirs:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    for event_dir in event_dirs:
        events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "images": 1})
        events.Reload()
        tags = set(events.Tags().get("scalars", []))
        epoch_of_step: dict[int, int] = {}
        if "epoch" in tags:
            for event in events.Scalars("epoch"):
                epoch_of_step.setdefault(event.step, int(event.value))
        for tag in CURVE_TAGS:
            if tag not in tags:
                continue
            for i, event in enumerate(events.Scalars(tag)):
                epoch = epoch_of_step.get(event.step, i)
                curves.setdefault(tag, {})[epoch] = float(event.value)
    return {tag: sorted(values.items()) for tag, values in curves.items()}


def read_run(run_dir: RunDir) -> Run:
    status = run_dir.status()
    metrics = run_dir.metrics()
    state = status.get("status") or ("completed" if metrics else "unknown")
    run = Run(
        path=run_dir.path,
        overrides=read_overrides(run_dir),
        status=str(state),
        error=" ".join(str(status.get("error", "")).split()),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        wall_time_s=run_dir.wall_time(),
    )
    run.curves = csv_curves(run_dir.path) or tensorboard_curves(run_dir.path)
    epochs = {e for tag in CURVE_TAGS for e, _ in run.curves.get(tag, [])}
    run.epochs = len(epochs) if epochs else None
    if run.curves.get("val/acc"):
        run.best_epoch = max(run.curves["val/acc"], key=lambda point: point[1])[0] + 1
    return run


def collect(roots: Sequence[Path]) -> list[Run]:
    """Every run below ``roots``, named by its path relative to their common parent."""
    try:
        dirs = find_run_dirs(roots)
    except NotADirectoryError as err:
        raise ReportError(str(err)) from None
    if not dirs:
        raise ReportError(
            "no run dirs found below " + ", ".join(map(str, roots)) + f" (a run dir holds "
            f"{OVERRIDES_FILE} or {CONFIG_FILE})"
        )
    runs = [read_run(d) for d in dirs]
    base = Path(os.path.commonpath([str(Path(r).resolve()) for r in roots]))
    for run in runs:
        relative = os.path.relpath(run.path, base)
        run.name = relative if relative != "." else run.path.name
    return runs


# ---------------------------------------------------------------------------------- tables
def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose values are not the same in every run (all keys for one run)."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.overrides))
    if len(runs) == 1:
        return list(keys)
    return [k for k in keys if len({run.overrides.get(k, ABSENT) for run in runs}) > 1]


def metric_names(runs: Sequence[Run]) -> list[str]:
    names = {n for run in runs for n in run.metrics if not n.startswith("lr-")}
    first = [n for n in METRIC_ORDER if n in names]
    return first + sorted(names - set(first))


def sort_runs(runs: list[Run], metric: str | None) -> list[Run]:
    """Best first by ``metric`` (ascending for losses); runs without it keep their order, last."""
    if not metric or metric == "none":
        return runs
    sign = 1.0 if "loss" in metric else -1.0
    scored = [r for r in runs if math.isfinite(r.metrics.get(metric, math.nan))]
    others = [r for r in runs if r not in scored]
    return sorted(scored, key=lambda r: sign * r.metrics[metric]) + others


def optimized_metric(runs: Sequence[Run]) -> str:
    """The ``optimized_metric`` the runs were started with (default ``val/acc_best``)."""
    for run in runs:
        name = RunDir(run.path).config().get("optimized_metric")
        if name:
            return str(name)
    return "val/acc_best"


def fmt_number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def fmt_value(value: str) -> str:
    """An override value for display: long floats (Optuna's samples) to 4 significant digits."""
    if len(value) > 8 and re.fullmatch(r"-?\d*\.\d+(e-?\d+)?|-?\d+e-?\d+", value):
        return f"{float(value):.4g}"
    return value


def md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_rows(runs: Sequence[Run], keys: Sequence[str], metrics: Sequence[str]) -> list[list[Any]]:
    return [
        [
            run.name,
            run.status,
            *(run.overrides.get(k, ABSENT) for k in keys),
            run.epochs if run.epochs is not None else "",
            run.best_epoch if run.best_epoch is not None else "",
            run.wall_time_s,
            *(run.metrics.get(m) for m in metrics),
            run.error,
        ]
        for run in runs
    ]


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


# ---------------------------------------------------------------------------------- plot
def short_label(run: Run, keys: Sequence[str]) -> str:
    """``run: lr=0.1, batch_size=16`` from the differing overrides (last key part if unique)."""
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for key, tail in zip(keys, tails, strict=True):
        name = tail if tails.count(tail) == 1 else key
        parts.append(f"{name}={fmt_value(run.overrides.get(key, ABSENT))}")
    return f"{run.name}: " + ", ".join(parts) if parts else run.name


def plot_val_acc_curves(
    runs: Sequence[Run], keys: Sequence[str], path: Path, max_labelled: int = 12
) -> Path:
    """val/acc per epoch of every run; the ``max_labelled`` best get colours and a legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with_curves = [r for r in runs if r.curves.get("val/acc")]
    best = sorted(with_curves, key=lambda r: -max(v for _, v in r.curves["val/acc"]))
    labelled = {id(r) for r in best[:max_labelled]}
    legend_rows = min(len(with_curves), max_labelled)
    figure = Figure(figsize=(9, 4.5 + 0.2 * legend_rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for run in with_curves:
        epochs, values = zip(*run.curves["val/acc"], strict=True)
        xs = [e + 1 for e in epochs]
        if id(run) in labelled:
            ax.plot(xs, values, "o-", markersize=3, label=short_label(run, keys))
        else:
            ax.plot(xs, values, "-", color="0.75", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val/acc")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    title = f"val/acc of {len(with_curves)} runs"
    ax.set_title(
        title + (f" ({max_labelled} best labelled)" if len(with_curves) > max_labelled else "")
    )
    if legend_rows:
        figure.legend(fontsize=7, loc="outside lower center", ncols=1, frameon=False)
    figure.savefig(path)
    return path
