"""The statistics of ``imgcls-report`` (docs/studies.md): groups of repeats and comparisons."""

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

ALPHA = 0.05
#: from this many pairs on, the Wilcoxon signed-rank test is reported too
WILCOXON_MIN_PAIRS = 6
ABSENT = "—"  # an override a run did not set
SUMMARY = ["n", "mean", "std", "ci_low", "ci_high"]
COMPARED = ["group", "baseline", "metric", "test", "n", "difference", "ci_low", "ci_high"]
COMPARED += ["p_t", "p_wilcoxon", "verdict"]


def fmt_value(value: str) -> str:
    """An override value for display: long floats (Optuna's samples) to 4 significant digits."""
    if len(value) > 8 and re.fullmatch(r"-?\d*\.\d+(e-?\d+)?|-?\d+e-?\d+", value):
        return f"{float(value):.4g}"
    return value


def cell(value: Any) -> str:
    """A markdown cell: floats to 4 decimals, nothing for a missing value."""
    if pd.isna(value):
        return ""
    text = f"{value:.4f}" if isinstance(value, float) else fmt_value(str(value))
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(frame: pd.DataFrame) -> str:
    lines = [" | ".join(frame.columns), "---|" * frame.shape[1]]
    lines += [" | ".join(row) for row in frame.map(cell).itertuples(index=False)]
    return "\n".join(f"| {line} |" if i != 1 else f"|{line}" for i, line in enumerate(lines))


def group_stats(
    frame: pd.DataFrame, done: pd.DataFrame, keys: list[str], metrics: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per group: its ``keys``, runs, and n, mean, std, 95% CI of each metric over ``done``."""
    by = frame.groupby("group", sort=False)
    table = by[keys].first().assign(runs=by.size())
    table["completed"] = by.status.agg(lambda status: status.eq("completed").sum())
    cells = table.copy()
    for metric in metrics:  # groups without a completed run: empty
        summary = done.groupby("group", sort=False)[metric].agg(["count", "mean", "std"])
        n, mean, std = (summary.reindex(table.index)[s] for s in ("count", "mean", "std"))
        low, high = stats.t.interval(1 - ALPHA, n - 1, loc=mean, scale=std / np.sqrt(n))
        table[[f"{metric}_{s}" for s in SUMMARY]] = np.column_stack([n, mean, std, low, high])
        table[f"{metric}_n"] = table[f"{metric}_n"].astype("Int64")
        cells[metric] = [
            f"{m:.4f} ± {s:.4f} [{lo:.4f}, {hi:.4f}]" if k > 1 else cell(m)
            for k, m, s, lo, hi in zip(n, mean, std, low, high, strict=True)
        ]
    return table, cells


def compare(a: pd.Series, b: pd.Series) -> list[Any] | None:
    """Paired on the shared repeats (index), else Welch's t-test; None: too few values."""
    shared, p_wilcoxon = a.index.intersection(b.index), None
    if len(shared) >= 2:
        a, b = a[shared], b[shared]
        test, n, result = "paired", len(shared), stats.ttest_rel(a, b)
        if n >= WILCOXON_MIN_PAIRS:
            p_wilcoxon = float(stats.wilcoxon(a - b).pvalue) if (a != b).any() else 1.0
    elif min(len(a), len(b)) >= 2:
        result = stats.ttest_ind(a, b, equal_var=False)
        test, n = "Welch (unpaired)", min(len(a), len(b))
    else:
        return None
    interval = result.confidence_interval(1 - ALPHA)
    p = max(result.pvalue, p_wilcoxon or 0.0)  # every test must agree
    verdict = f"{'not ' * bool(p >= ALPHA)}significant at {ALPHA:g}"
    verdict = verdict if np.isfinite(p) else "not testable"
    return [test, n, a.mean() - b.mean(), *interval, result.pvalue, p_wilcoxon, verdict]


def compare_all(
    done: pd.DataFrame, groups: pd.DataFrame, keys: list[str], baseline: str, metrics: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """Every group against its ``baseline`` (KEY=VALUE) group: a table and its markdown lines."""
    key, _, value = baseline.partition("=")
    rows = []
    for label, overrides in groups[keys].iterrows() if key in keys else ():
        base = " ".join(f"{k}={v}" for k, v in {**overrides, key: value}.items())
        for metric in metrics if base != label and base in groups.index else ():
            values = (done[done.group == g].set_index("repeat")[metric] for g in (label, base))
            row = compare(*(v.dropna() for v in values)) if metric in done else None
            rows += [[label, base, metric, *row]] if row else []
    table = pd.DataFrame(rows, columns=COMPARED)
    if not rows:
        return table, [
            "No group has a baseline group to compare with (same overrides, that value)."
        ]
    cells = table.iloc[:, :5].astype(str)
    cells["difference [95% CI]"] = [
        f"{d:+.4f} [{cell(low)}, {cell(high)}]"
        for d, low, high in table[["difference", "ci_low", "ci_high"]].itertuples(index=False)
    ]
    cells["p (t-test)"] = table.p_t.map("{:.3g}".format)
    cells["p (Wilcoxon)"] = table.p_wilcoxon.map(lambda p: "" if pd.isna(p) else f"{p:.3g}")
    note = "difference = group − baseline; paired on the seeds/folds both have, Welch's t-test "
    note += "where they share fewer than 2; Wilcoxon signed-rank from 6 pairs."
    return table, [markdown(cells.assign(verdict=table.verdict)), "", note]


def plot_groups(
    done: pd.DataFrame, groups: pd.DataFrame, keys: list[str], metric: str, path: Path
) -> Path:
    """One point per completed run and the mean ± 95% CI of each group, for ``metric``."""
    figure = Figure(figsize=(max(5.0, 1.2 * len(groups) + 2), 4.5), layout="constrained")
    ax = figure.subplots()
    for x, (label, group) in enumerate(groups.iterrows()):
        values = done.loc[done.group == label, metric].dropna()
        jitter = 0.08 * (np.arange(len(values)) - (len(values) - 1) / 2)
        ax.plot(x + jitter, values, "o", color="0.5", markersize=4)
        mean, low, high = (group[f"{metric}_{s}"] for s in ("mean", "ci_low", "ci_high"))
        if np.isfinite(low):
            ax.errorbar(x + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="s", capsize=4)
    labels = [", ".join(map(fmt_value, g)) or "all" for g in groups[keys].itertuples(index=False)]
    ax.set_xticks(range(len(groups)), labels, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=f"{metric}: runs (grey) and mean ± 95% CI per group")
    ax.grid(alpha=0.3)
    figure.savefig(path)
    return path
