"""Statistics, tables and plots of ``imgcls-report`` (docs/studies.md): runs differing only by the
repeat keys form a group (n, mean, sample std, 95% Student-t interval of its completed runs);
``--baseline KEY=VALUE`` compares each group with the group that has ``KEY=VALUE`` and the same
other overrides: paired on the repeats both have (t-test, Wilcoxon from 6 pairs), else Welch."""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

ALPHA = 0.05
#: from this many pairs on, the Wilcoxon signed-rank test is reported too
WILCOXON_MIN_PAIRS = 6
ABSENT = "—"  # an override a run did not set
COMPARED = ["group", "baseline", "metric", "test", "n", "difference", "ci_low", "ci_high"]
COMPARED += ["p_t", "p_wilcoxon", "verdict"]
GROUPED_CSV = "results_grouped.csv"
COMPARED_CSV = "results_compared.csv"
GROUPS_PNG = "groups.png"
CURVES_PNG = "val_acc_curves.png"


def fmt_number(value: float | None, digits: int = 4) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


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


def table(
    path: Path, header: list[str], rows: list[list], md_rows: list[list], written: list[Path]
):
    """Write ``rows`` (raw values) as CSV to ``path``; return ``md_rows`` as a markdown table
    (its first row the header)."""
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *([("" if v is None else v) for v in r] for r in rows)])
    written.append(path)
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in md_rows]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([lines[0], "|" + "---|" * len(cells[0]), *lines[1:]])


@dataclass
class Group:
    """Runs that differ only by the repeat keys: one configuration, repeated."""

    overrides: dict[str, str]
    runs: list[Any]  # report.Run

    @property
    def completed(self) -> list[Any]:
        return [r for r in self.runs if r.status == "completed"]

    def values(self, metric: str) -> dict[tuple[str, ...], float]:
        """``metric`` of each completed run, by its repeat (seed, fold) values."""
        return {r.repeat: r.metrics[metric] for r in self.completed if metric in r.metrics}

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.overrides.items())


def summary(values: Sequence[float]) -> tuple[int, float, float, float, float] | None:
    """n, mean, sample std and the 95% Student-t interval (nan for one value)."""
    n = len(values)
    if not n:
        return None
    mean, std = statistics.fmean(values), statistics.stdev(values) if n > 1 else math.nan
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return n, mean, std, mean - half, mean + half


def group_runs(runs: Sequence[Any], keys: Sequence[str], repeat_keys: Sequence[str]) -> list[Group]:
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for run in runs:
        run.repeat = tuple(run.overrides.get(k, ABSENT) for k in repeat_keys)
        config = tuple((k, run.overrides.get(k, ABSENT)) for k in keys if k not in repeat_keys)
        groups.setdefault(config, Group(dict(config), [])).runs.append(run)
    return list(groups.values())


def compare(group: Group, baseline: Group, metric: str) -> list[Any] | None:
    """A ``COMPARED`` row: paired on the shared repeats, else Welch's t-test (None: too few)."""
    mine, base = group.values(metric), baseline.values(metric)
    shared = sorted(set(mine) & set(base))
    p_w = None
    if len(shared) >= 2:
        a, b = [mine[k] for k in shared], [base[k] for k in shared]
        test, n, result = "paired", len(shared), stats.ttest_rel(a, b)
        diffs = [x - y for x, y in zip(a, b, strict=True)]
        if n >= WILCOXON_MIN_PAIRS:
            p_w = float(stats.wilcoxon(diffs).pvalue) if any(diffs) else 1.0
    else:
        a, b = list(mine.values()), list(base.values())
        if len(a) < 2 or len(b) < 2:
            return None
        result = stats.ttest_ind(a, b, equal_var=False)
        test, n = "Welch (unpaired)", min(len(a), len(b))
    interval = result.confidence_interval(1 - ALPHA)
    p = max(result.pvalue, p_w) if p_w is not None else result.pvalue  # every test must agree
    verdict = ("significant" if p < ALPHA else "not significant") + f" at {ALPHA:g}"
    return [
        *(group.label(), baseline.label(), metric, test, n),
        *(statistics.fmean(a) - statistics.fmean(b), interval.low, interval.high),
        *(float(result.pvalue), p_w, verdict if math.isfinite(p) else "not testable"),
    ]


def comparisons(groups: Sequence[Group], baseline: str, metrics: Sequence[str]) -> list[list]:
    """Every group against its baseline group: ``KEY=VALUE`` and the same other overrides."""
    key, _, value = baseline.partition("=")
    rows = []
    for group in groups:
        wanted = {**group.overrides, key: value}
        base = next((g for g in groups if g.overrides == wanted and g is not group), None)
        rows += [row for m in metrics if base for row in [compare(group, base, m)] if row]
    return rows


def plot_groups(groups: Sequence[Group], metric: str, labels: Sequence[str], path: Path) -> Path:
    """One point per run and the mean ± 95% CI of each group, for ``metric``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(5.0, 1.2 * len(groups) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for x, group in enumerate(groups):
        values = list(group.values(metric).values())
        jitter = [x + 0.08 * (i - (len(values) - 1) / 2) for i in range(len(values))]
        ax.plot(jitter, values, "o", color="0.5", markersize=4)
        s = summary(values)
        if s is not None and math.isfinite(s[3]):
            ax.errorbar(x + 0.3, s[1], yerr=[[s[1] - s[3]], [s[4] - s[1]]], fmt="s", capsize=4)
    ax.set_xticks(range(len(groups)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: runs (grey) and mean ± 95% CI per group")
    ax.grid(alpha=0.3)
    figure.savefig(path)
    return path


def group_table(groups: Sequence[Group], keys: list[str], metrics: list[str], out: Path, written):
    """The groups (``keys``: their overrides) as ``results_grouped.csv`` and markdown."""
    rows, md_rows = [], [[*keys, "runs", "completed", *metrics]]
    for group in groups:
        summaries = [summary(list(group.values(m).values())) for m in metrics]
        values = [group.overrides.get(k, ABSENT) for k in keys]
        counts = [len(group.runs), len(group.completed)]
        rows.append([*values, *counts, *(v for s in summaries for v in s or [None] * 5)])
        md_rows.append([*map(fmt_value, values), *counts, *map(interval_cell, summaries)])
    header = [*keys, "runs", "completed"]
    header += [f"{m}_{s}" for m in metrics for s in ("n", "mean", "std", "ci_low", "ci_high")]
    return table(out / GROUPED_CSV, header, rows, md_rows, written)


def interval_cell(s: tuple[int, float, float, float, float] | None) -> str:
    """``mean ± std [low, high]``."""
    if s is None:
        return ""
    return f"{fmt_number(s[1])} ± {fmt_number(s[2])} [{fmt_number(s[3])}, {fmt_number(s[4])}]"


def comparison_table(rows: list[list[Any]], out: Path, written: list[Path]) -> list[str]:
    """The comparisons with the baseline as ``results_compared.csv`` and markdown lines."""
    if not rows:
        return ["No group has a baseline group to compare with (same overrides, that value)."]
    md_rows = [[*COMPARED[:5], "difference [95% CI]", "p (t-test)", "p (Wilcoxon)", "verdict"]]
    md_rows += [
        [*r[:5], f"{r[5]:+.4f} [{fmt_number(r[6])}, {fmt_number(r[7])}]", f"{r[8]:.3g}"]
        + [f"{r[9]:.3g}" if r[9] is not None else "", r[10]]
        for r in rows
    ]
    return [
        table(out / COMPARED_CSV, COMPARED, rows, md_rows, written),
        "",
        "difference = group − baseline; paired on the seeds/folds both have, Welch's t-test "
        "where they share fewer than 2; Wilcoxon signed-rank from 6 pairs.",
    ]


def short_label(run: Any, keys: Sequence[str]) -> str:
    """``run: lr=0.1, batch_size=16`` from the differing overrides (last key part if unique)."""
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    parts = [
        f"{tail if tails.count(tail) == 1 else key}={fmt_value(run.overrides.get(key, ABSENT))}"
        for key, tail in zip(keys, tails, strict=True)
    ]
    return f"{run.name}: " + ", ".join(parts) if parts else run.name


def plot_val_acc_curves(
    runs: Sequence[Any], keys: Sequence[str], path: Path, labelled: int = 12
) -> Path:
    """val/acc per epoch of every run with curves; the ``labelled`` best get colours, a legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    runs = sorted(runs, key=lambda r: -max(v for _, v in r.curves["val/acc"]))
    figure = Figure(figsize=(9, 4.5 + 0.2 * min(len(runs), labelled)), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for i, run in enumerate(runs):
        epochs, values = zip(*run.curves["val/acc"], strict=True)
        xs = [e + 1 for e in epochs]
        if i < labelled:
            ax.plot(xs, values, "o-", markersize=3, label=short_label(run, keys))
        else:
            ax.plot(xs, values, "-", color="0.75", linewidth=0.8)
    more = f" ({labelled} best labelled)" if len(runs) > labelled else ""
    ax.set(xlabel="epoch", ylabel="val/acc", title=f"val/acc of {len(runs)} runs{more}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    figure.legend(fontsize=7, loc="outside lower center", ncols=1, frameon=False)
    figure.savefig(path)
    return path
