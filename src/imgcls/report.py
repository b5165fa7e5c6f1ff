"""``imgcls-report DIR...``: every run below the given dirs, side by side.

A run dir is a dir holding ``.hydra/overrides.yaml`` or ``config.yaml`` (what ``train.py``
writes). For each run the report gives the overrides that differ between the runs, its status
(completed / failed / running), epochs, wall time, final and best metrics and, for a failed run,
its error. It writes ``results.csv``, ``results.md`` (markdown tables; runs that differ only by
``seed`` or ``data.fold`` are also grouped with mean ± std) and ``val_acc_curves.png`` into the
first given dir, or ``--out``. Run dirs are read through ``imgcls.run_dir``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgcls.run_dir import CONFIG_FILE, OVERRIDES_FILE, Override, RunDir, find_run_dirs

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
GROUPED_CSV = "results_grouped.csv"
CURVES_PNG = "val_acc_curves.png"
#: overrides that say how a run was started, not what it computed
IGNORED_OVERRIDES = ("resume",)
#: runs differing only by these are repeats of one configuration
REPEAT_KEYS = ("seed", "data.fold")
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


@dataclass
class Group:
    """Runs that differ only by ``REPEAT_KEYS``: one configuration, repeated."""

    overrides: dict[str, str]
    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    def stats(self, metric: str) -> tuple[float, float, int] | None:
        """(mean, sample std, n) of ``metric`` over the completed runs that have it."""
        values = [r.metrics[metric] for r in self.completed if metric in r.metrics]
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), std, len(values)


def group_runs(runs: Sequence[Run], keys: Sequence[str], repeat_keys: Sequence[str]) -> list[Group]:
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for run in runs:
        config = tuple((k, run.overrides.get(k, ABSENT)) for k in keys if k not in repeat_keys)
        groups.setdefault(config, Group(dict(config), [])).runs.append(run)
    return list(groups.values())


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


def optuna_summary(roots: Sequence[Path]) -> list[str]:
    """The best trial of each Optuna sweep among ``roots`` (``optimization_results.yaml``)."""
    lines = []
    for root in roots:
        for path in sorted(Path(root).rglob("optimization_results.yaml")):
            result = yaml.safe_load(path.read_text()) or {}
            if "best_value" in result:
                params = ", ".join(f"{k}={v}" for k, v in (result.get("best_params") or {}).items())
                lines.append(
                    f"- Optuna ({path.parent.name}): best value {fmt_number(result['best_value'])}"
                    f" with {params}"
                )
    return lines


@dataclass
class Report:
    runs: list[Run]
    keys: list[str]
    metrics: list[str]
    groups: list[Group]
    sort_metric: str
    written: list[Path] = field(default_factory=list)
    markdown: str = ""


def build_report(
    roots: Sequence[Path],
    out_dir: Path | None = None,
    sort: str | None = None,
    repeat_keys: Sequence[str] = REPEAT_KEYS,
    plot: bool = True,
) -> Report:
    """Collect the runs below ``roots`` and write the result files into ``out_dir``."""
    roots = [Path(r) for r in roots]
    runs = collect(roots)
    sort_metric = sort or optimized_metric(runs)
    runs = sort_runs(runs, sort_metric)
    keys = differing_keys(runs)
    metrics = metric_names(runs)
    groups = group_runs(runs, keys, repeat_keys)
    report = Report(runs, keys, metrics, groups, sort_metric)
    out = Path(out_dir) if out_dir else roots[0]
    out.mkdir(parents=True, exist_ok=True)

    header = ["run", "status", *keys, "epochs", "best_epoch", "wall_time_s", *metrics, "error"]
    rows = run_rows(runs, keys, metrics)
    write_csv(out / RESULTS_CSV, header, rows)
    report.written.append(out / RESULTS_CSV)

    counts = {s: sum(r.status == s for r in runs) for s in dict.fromkeys(r.status for r in runs)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    md = [f"# Results: {len(runs)} runs ({summary})", ""]
    optuna_lines = optuna_summary(roots)
    md += [*optuna_lines, ""] if optuna_lines else []
    md += [f"Sorted by `{sort_metric}`, best first.", ""] if sort_metric != "none" else []
    md_rows = [
        [
            run.name,
            run.status,
            *(fmt_value(run.overrides.get(k, ABSENT)) for k in keys),
            run.epochs if run.epochs is not None else "",
            run.best_epoch if run.best_epoch is not None else "",
            fmt_seconds(run.wall_time_s),
            *(fmt_number(run.metrics.get(m)) for m in metrics),
            run.error[:120],
        ]
        for run in runs
    ]
    md_header = ["run", "status", *keys, "epochs", "best epoch", "wall time", *metrics, "error"]
    md.append(md_table(md_header, md_rows))

    repeated = [k for k in repeat_keys if k in keys]
    if repeated and any(len(g.runs) > 1 for g in groups):
        config_keys = [k for k in keys if k not in repeat_keys]
        g_header = [*config_keys, "runs", "completed", *metrics]
        g_md_rows, g_csv_rows = [], []
        for group in groups:
            stats = [group.stats(m) for m in metrics]
            values = [group.overrides.get(k, ABSENT) for k in config_keys]
            counts_ = [len(group.runs), len(group.completed)]
            g_md_rows.append(
                [*map(fmt_value, values), *counts_]
                + [f"{fmt_number(s[0])} ± {fmt_number(s[1])}" if s else "" for s in stats]
            )
            g_csv_rows.append(
                [*values, *counts_] + [x for s in stats for x in (s[:2] if s else (None, None))]
            )
        over = " and ".join(f"`{k}`" for k in repeated)
        md += ["", f"## Mean ± std over {over} (completed runs; sample std)", ""]
        md.append(md_table(g_header, g_md_rows))
        csv_header = [*config_keys, "runs", "completed"]
        csv_header += [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
        write_csv(out / GROUPED_CSV, csv_header, g_csv_rows)
        report.written.append(out / GROUPED_CSV)

    if plot and any(r.curves.get("val/acc") for r in runs):
        plot_val_acc_curves(runs, keys, out / CURVES_PNG)
        report.written.append(out / CURVES_PNG)
        md += ["", f"![val/acc per epoch]({CURVES_PNG})"]
    report.markdown = "\n".join(md) + "\n"
    (out / RESULTS_MD).write_text(report.markdown)
    report.written.insert(1, out / RESULTS_MD)
    return report


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


# ---------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="imgcls-report",
        description="Put every run below the given run or multirun dirs side by side: "
        f"writes {RESULTS_CSV}, {RESULTS_MD} and {CURVES_PNG}.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun dirs (searched below)")
    parser.add_argument("--out", type=Path, help="where to write the results (default: first dir)")
    parser.add_argument(
        "--sort",
        help="metric to sort by, best first (default: the runs' optimized_metric); 'none' keeps "
        "directory order",
    )
    parser.add_argument(
        "--repeat-keys",
        nargs="*",
        default=list(REPEAT_KEYS),
        help="overrides whose runs are repeats, averaged as mean ± std (default: %(default)s)",
    )
    parser.add_argument("--no-plot", action="store_true", help=f"do not draw {CURVES_PNG}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = build_report(args.dirs, args.out, args.sort, args.repeat_keys, not args.no_plot)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.markdown)
    for path in report.written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
