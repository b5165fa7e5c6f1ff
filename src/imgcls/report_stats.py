"""Statistics of ``imgcls-report``: repeats grouped, confidence intervals, tests against a baseline.

Runs that differ only in ``seed`` and/or ``data.fold`` (the repeat keys) form one group. Each
group gets n, mean, sample std and a 95% Student-t confidence interval of every final metric
(completed runs only). With ``--baseline KEY=VALUE`` every other group is compared with the group
that has ``KEY=VALUE`` and the same other overrides: on the repeats both have (same seed / fold)
by the paired mean difference, its 95% CI, a paired t-test and, from 6 pairs, the Wilcoxon
signed-rank test; groups that share fewer than 2 repeats by Welch's t-test, and the table says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from imgcls.report_runs import ABSENT, fmt_number, fmt_value, md_table, write_csv

ALPHA = 0.05
GROUPED_CSV = "results_grouped.csv"
COMPARED_CSV = "results_compared.csv"
GROUPS_PNG = "groups.png"
#: from this many pairs on, the Wilcoxon signed-rank test is reported too
WILCOXON_MIN_PAIRS = 6


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

    def summary(self, metric: str) -> Summary | None:
        return summarise(list(self.values(metric).values()))


@dataclass
class Summary:
    n: int
    mean: float
    std: float
    low: float  # the 95% confidence interval (nan for one run)
    high: float


def t_interval(mean: float, sem: float, df: float) -> tuple[float, float]:
    if df <= 0 or not math.isfinite(sem):
        return math.nan, math.nan
    half = stats.t.ppf(1 - ALPHA / 2, df) * sem
    return mean - half, mean + half


def summarise(values: Sequence[float]) -> Summary | None:
    if not values:
        return None
    n, mean = len(values), statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else math.nan
    return Summary(n, mean, std, *t_interval(mean, std / math.sqrt(n), n - 1))


def group_runs(runs: Sequence[Any], keys: Sequence[str], repeat_keys: Sequence[str]) -> list[Group]:
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for run in runs:
        run.repeat = tuple(run.overrides.get(k, ABSENT) for k in repeat_keys)
        config = tuple((k, run.overrides.get(k, ABSENT)) for k in keys if k not in repeat_keys)
        groups.setdefault(config, Group(dict(config), [])).runs.append(run)
    return list(groups.values())


@dataclass
class Comparison:
    group: Group
    baseline: Group
    metric: str
    test: str  # "paired" or "Welch (unpaired)"
    n: int  # pairs, or the smaller group's size
    difference: float  # group - baseline
    low: float
    high: float
    p_t: float
    p_wilcoxon: float | None = None

    @property
    def verdict(self) -> str:
        # significant only where every test reported agrees
        p = max(self.p_t, self.p_wilcoxon) if self.p_wilcoxon is not None else self.p_t
        if not math.isfinite(p):
            return "not testable"
        return ("significant" if p < ALPHA else "not significant") + f" at {ALPHA:g}"


def compare(group: Group, baseline: Group, metric: str) -> Comparison | None:
    """``group`` vs ``baseline`` on ``metric``: paired on shared repeats, else Welch's test."""
    mine, base = group.values(metric), baseline.values(metric)
    shared = sorted(set(mine) & set(base))
    if len(shared) >= 2:
        diffs = [mine[k] - base[k] for k in shared]
        s = summarise(diffs)
        p_t = float(stats.ttest_rel([mine[k] for k in shared], [base[k] for k in shared]).pvalue)
        p_w = None
        if len(shared) >= WILCOXON_MIN_PAIRS:
            p_w = float(stats.wilcoxon(diffs).pvalue) if any(diffs) else 1.0
        return Comparison(group, baseline, metric, "paired", s.n, s.mean, s.low, s.high, p_t, p_w)
    a, b = list(mine.values()), list(base.values())
    if len(a) < 2 or len(b) < 2:
        return None
    welch = stats.ttest_ind(a, b, equal_var=False)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb else 0
    low, high = t_interval(diff, math.sqrt(va + vb), df)
    n = min(len(a), len(b))
    return Comparison(group, baseline, metric, "Welch (unpaired)", n, diff, low, high, welch.pvalue)


def baseline_of(group: Group, groups: Sequence[Group], key: str, value: str) -> Group | None:
    """The group with ``key=value`` and the same other overrides as ``group`` (not itself)."""
    if group.overrides.get(key) == value:
        return None
    wanted = {**group.overrides, key: value}
    return next((g for g in groups if g.overrides == wanted), None)


def comparisons(groups: Sequence[Group], baseline: str, metrics: Sequence[str]) -> list[Comparison]:
    key, _, value = baseline.partition("=")
    found = []
    for group in groups:
        base = baseline_of(group, groups, key, value)
        for metric in metrics if base else ():
            result = compare(group, base, metric)
            if result is not None:
                found.append(result)
    return found


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
        s = group.summary(metric)
        if s is not None and math.isfinite(s.low):
            ax.errorbar(x + 0.3, s.mean, yerr=[[s.mean - s.low], [s.high - s.mean]], fmt="s",
                        color="C0", capsize=4)  # fmt: skip
    ax.set_xticks(range(len(groups)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: runs (grey) and mean ± 95% CI per group")
    ax.grid(alpha=0.3)
    figure.savefig(path)
    return path


def group_tables(
    groups: Sequence[Group],
    keys: Sequence[str],
    repeat_keys: Sequence[str],
    metrics: Sequence[str],
    out: Path,
    written: list[Path],
) -> list[str]:
    """The grouped table (markdown lines) and ``results_grouped.csv``."""
    config_keys = [k for k in keys if k not in repeat_keys]
    md_rows, csv_rows = [], []
    for group in groups:
        summaries = [group.summary(m) for m in metrics]
        values = [group.overrides.get(k, ABSENT) for k in config_keys]
        counts = [len(group.runs), len(group.completed)]
        md_rows.append(
            [*map(fmt_value, values), *counts]
            + [
                f"{fmt_number(s.mean)} ± {fmt_number(s.std)} [{fmt_number(s.low)}, "
                f"{fmt_number(s.high)}]"
                if s
                else ""
                for s in summaries
            ]
        )
        fields = ("n", "mean", "std", "low", "high")
        csv_rows.append(
            [*values, *counts] + [getattr(s, f) if s else None for s in summaries for f in fields]
        )
    csv_header = [*config_keys, "runs", "completed"]
    csv_header += [f"{m}_{s}" for m in metrics for s in ("n", "mean", "std", "ci_low", "ci_high")]
    write_csv(out / GROUPED_CSV, csv_header, csv_rows)
    written.append(out / GROUPED_CSV)
    return [md_table([*config_keys, "runs", "completed", *metrics], md_rows)]


def comparison_tables(found: Sequence[Comparison], out: Path, written: list[Path]) -> list[str]:
    """The comparisons with the baseline (markdown lines) and ``results_compared.csv``."""
    if not found:
        return ["No group has a baseline group to compare with (same overrides, that value)."]
    header = ["group", "baseline", "metric", "test", "n", "difference", "ci_low", "ci_high"]
    header += ["p_t", "p_wilcoxon", "verdict"]
    rows = [
        [
            " ".join(f"{k}={v}" for k, v in c.group.overrides.items()),
            " ".join(f"{k}={v}" for k, v in c.baseline.overrides.items()),
            c.metric,
            c.test,
            c.n,
            c.difference,
            c.low,
            c.high,
            c.p_t,
            c.p_wilcoxon,
            c.verdict,
        ]
        for c in found
    ]
    write_csv(out / COMPARED_CSV, header, rows)
    written.append(out / COMPARED_CSV)
    md_rows = [
        [*r[:5], f"{r[5]:+.4f} [{fmt_number(r[6])}, {fmt_number(r[7])}]", f"{r[8]:.3g}"]
        + [f"{r[9]:.3g}" if r[9] is not None else "", r[10]]
        for r in rows
    ]
    md_header = [*header[:5], "difference [95% CI]", "p (t-test)", "p (Wilcoxon)", "verdict"]
    return [
        md_table(md_header, md_rows),
        "",
        "difference = group − baseline; paired on the seeds/folds both have, Welch's t-test "
        "where they share fewer than 2; Wilcoxon signed-rank from 6 pairs.",
    ]
