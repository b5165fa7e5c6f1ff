"""``imgcls-report DIR...``: every run below the given dirs side by side (docs/workflow.md).

Writes ``results.csv``, ``results.md`` and ``val_acc_curves.png``; repeats over ``seed`` /
``data.fold`` are grouped and ``--baseline`` compares groups (``imgcls.report_stats``). It reads
the run dirs' files itself and is not on the training path: only a multirun's end calls it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgcls.report_stats import (
    ABSENT,
    compare_groups,
    fmt_value,
    group_stats,
    markdown,
    plot_groups,
)

RESULTS_CSV, RESULTS_MD, CURVES_PNG = "results.csv", "results.md", "val_acc_curves.png"
GROUPED_CSV, COMPARED_CSV, GROUPS_PNG = "results_grouped.csv", "results_compared.csv", "groups.png"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
#: runs differing only by these are repeats of one configuration
REPEAT_KEYS = ("seed", "data.fold")
#: overrides that say how a run was started, not what it computed
IGNORED_OVERRIDES = ("resume",)
METRIC_ORDER = [
    "val/acc_best",
    *(f"{s}/{m}" for s in ("val", "test", "train") for m in ("acc", "loss")),
]
CURVE_TAGS = ["val/acc", "train/loss"]


class ReportError(Exception):
    """A problem with the report's input, printed as one line (exit code 2)."""


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    status: str
    error: str
    metrics: dict[str, float]
    curves: pd.DataFrame  # CURVE_TAGS per epoch
    wall_time_s: float | None
    optimized_metric: str | None
    name: str = ""


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; empty when missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def csv_curves(run_dir: Path) -> pd.DataFrame:
    """``CURVE_TAGS`` per epoch from CSVLogger's ``metrics.csv`` files (later versions win)."""
    frames = [pd.read_csv(path) for path in sorted(run_dir.rglob("metrics.csv"))]
    frames = [frame for frame in frames if "epoch" in frame]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames)
    return frame.groupby("epoch")[[t for t in CURVE_TAGS if t in frame]].last().rename(index=int)


def tensorboard_curves(run_dir: Path) -> pd.DataFrame:
    """``CURVE_TAGS`` per epoch from TensorBoard event files (steps mapped to epochs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, dict[int, float]] = {}
    for event_dir in sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}):
        events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
        events.Reload()
        tags = events.Tags()["scalars"]
        steps = events.Scalars("epoch")[::-1] if "epoch" in tags else []
        epoch_of_step = {event.step: int(event.value) for event in steps}
        for tag in set(tags) & set(CURVE_TAGS):
            for i, event in enumerate(events.Scalars(tag)):
                curves.setdefault(tag, {})[epoch_of_step.get(event.step, i)] = event.value
    return pd.DataFrame(curves).sort_index()


def wall_time(path: Path, status: dict) -> float | None:
    """From ``status.json``'s times, else from Hydra's overrides file to the last status write."""
    start, end = status.get("started_at"), status.get("finished_at")
    if not isinstance(start, (int, float)):
        ends = [
            p.stat().st_mtime for p in (path / "status.json", path / "metrics.json") if p.is_file()
        ]
        if not (path / OVERRIDES_FILE).is_file() or not ends:
            return None
        start, end = (path / OVERRIDES_FILE).stat().st_mtime, max(ends)
    if status.get("status") == "running":
        end = time.time()
    return end - start if isinstance(end, (int, float)) and end >= start else None


def read_run(path: Path) -> Run:
    status = read_json(path / "status.json")
    metrics = read_json(path / "metrics.json") or status.get("metrics") or {}
    config = path / "config.yaml"
    config = (yaml.safe_load(config.read_text()) if config.is_file() else None) or {}
    given = path / OVERRIDES_FILE
    overrides = {}
    for item in (yaml.safe_load(given.read_text()) if given.is_file() else None) or []:
        head, sep, value = str(item).partition("=")
        key = head.lstrip("+~")
        if key not in IGNORED_OVERRIDES:  # ~key deletes it: <deleted>
            overrides[key] = value if sep else ("<deleted>" if head.startswith("~") else "")
    curves = csv_curves(path)
    curves = (tensorboard_curves(path) if curves.empty else curves).dropna(how="all")
    return Run(
        path=path,
        overrides=overrides,
        status=str(status.get("status") or ("completed" if metrics else "unknown")),
        error=" ".join(str(status.get("error", "")).split()),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        curves=curves.dropna(axis=1, how="all"),
        wall_time_s=wall_time(path, status),
        optimized_metric=config.get("optimized_metric"),
    )


def is_run_dir(path: Path) -> bool:
    return (path / OVERRIDES_FILE).is_file() or (path / "config.yaml").is_file()


def find_run_dirs(roots: Sequence[Path]) -> list[Path]:
    """Every run dir at or below ``roots`` (not inside run dirs), in natural order (2 before 10)."""
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise ReportError(f"{root} is not a directory")
        for current, dirs, _ in os.walk(root):
            if is_run_dir(Path(current)):
                found.append(Path(current).resolve())
                dirs.clear()
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(dict.fromkeys(found), key=natural_key)


def natural_key(path: Path) -> list[Any]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(path))]


def collect(roots: Sequence[Path]) -> list[Run]:
    """Every run below ``roots``, named by its path relative to their common parent."""
    runs = [read_run(path) for path in find_run_dirs(roots)]
    if not runs:
        raise ReportError(
            f"no run dirs found below {', '.join(map(str, roots))} (a run dir holds "
            f"{OVERRIDES_FILE} or config.yaml)"
        )
    base = os.path.commonpath([str(Path(r).resolve()) for r in roots])
    for run in runs:
        relative = os.path.relpath(run.path, base)
        run.name = relative if relative != "." else run.path.name
    return runs


def fmt_seconds(seconds: float) -> str:
    if pd.isna(seconds) or seconds < 60:
        return "" if pd.isna(seconds) else f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def plot_curves(runs: Sequence[Run], keys: Sequence[str], path: Path, labelled: int = 12) -> Path:
    """val/acc per epoch of every run; the ``labelled`` best get colours and a legend entry."""
    runs = sorted(runs, key=lambda r: -r.curves["val/acc"].max())
    figure = Figure(figsize=(9, 4.5 + 0.2 * min(len(runs), labelled)), layout="constrained")
    ax = figure.subplots()
    for i, run in enumerate(runs):
        curve = run.curves["val/acc"].dropna()
        label = ", ".join(f"{k}={fmt_value(run.overrides.get(k, ABSENT))}" for k in keys)
        style = {"label": f"{run.name}: {label}"} if i < labelled else {"color": "0.75"}
        ax.plot(curve.index + 1, curve, "o-" if i < labelled else "-", markersize=3, **style)
    more = f" ({labelled} best labelled)" if len(runs) > labelled else ""
    ax.set(xlabel="epoch", ylabel="val/acc", title=f"val/acc of {len(runs)} runs{more}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    figure.legend(fontsize=7, loc="outside lower center", frameon=False)
    figure.savefig(path)
    return path


def optuna_summary(roots: Sequence[Path]) -> list[str]:
    """The best trial of each Optuna sweep among ``roots`` (``optimization_results.yaml``)."""
    lines = []
    for path in sorted(p for root in roots for p in root.rglob("optimization_results.yaml")):
        result = yaml.safe_load(path.read_text()) or {}
        if "best_value" in result:
            params = ", ".join(f"{k}={v}" for k, v in (result.get("best_params") or {}).items())
            best = f"{result['best_value']:.4f}"
            lines.append(f"- Optuna ({path.parent.name}): best value {best} with {params}")
    return [*lines, ""] if lines else []


@dataclass
class Report:
    runs: list[Run]  # as found
    keys: list[str]
    markdown: str
    written: list[Path]


def build_report(
    roots: Sequence[Path],
    out_dir: Path | None = None,
    sort: str | None = None,
    repeat_keys: Sequence[str] = REPEAT_KEYS,
    plot: bool = True,
    baseline: str | None = None,
) -> Report:
    """Collect the runs below ``roots`` and write the result files into ``out_dir``."""
    roots = [Path(r) for r in roots]
    runs = collect(roots)
    configured = (r.optimized_metric for r in runs if r.optimized_metric)
    sort_metric = sort or str(next(configured, "val/acc_best"))
    if baseline and not any(baseline.partition("=")[0] in r.overrides for r in runs):
        raise ReportError(
            f"--baseline {baseline}: no run sets {baseline.partition('=')[0]}; "
            "give KEY=VALUE of an override the runs differ in"
        )
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    if len(runs) > 1:  # the overrides that differ between runs
        keys = [k for k in keys if len({r.overrides.get(k, ABSENT) for r in runs}) > 1]
    names = {m for r in runs for m in r.metrics if not m.startswith("lr-")}
    metrics = [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))
    config_keys = [k for k in keys if k not in repeat_keys]
    rows = [
        {"run": r.name, "status": r.status, **{k: r.overrides.get(k, ABSENT) for k in keys}}
        | {"epochs": len(r.curves) or None, "wall_time_s": r.wall_time_s, "error": r.error}
        | {"best_epoch": r.curves["val/acc"].idxmax() + 1 if "val/acc" in r.curves else None}
        | {m: r.metrics.get(m) for m in metrics}
        | {"group": " ".join(f"{k}={r.overrides.get(k, ABSENT)}" for k in config_keys)}
        | {"repeat": " ".join(r.overrides.get(k, ABSENT) for k in repeat_keys)}
        for r in runs
    ]
    columns = ["run", "status", *keys, "epochs", "best_epoch", "wall_time_s", *metrics, "error"]
    frame = pd.DataFrame(rows).astype({"epochs": "Int64", "best_epoch": "Int64"})
    if sort_metric in metrics:  # best first; runs without it last, as found
        ascending = "loss" in sort_metric
        frame = frame.sort_values(sort_metric, ascending=ascending, kind="stable")
    out = Path(out_dir) if out_dir else roots[0]
    out.mkdir(parents=True, exist_ok=True)
    frame[columns].to_csv(out / RESULTS_CSV, index=False)
    written = [out / RESULTS_CSV, out / RESULTS_MD]

    counts = frame.status.value_counts(sort=False)
    md = [f"# Results: {len(runs)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())})", ""]
    md += optuna_summary(roots)
    md += [f"Sorted by `{sort_metric}`, best first.", ""] if sort_metric != "none" else []
    shown = frame[columns].assign(wall_time_s=frame.wall_time_s.map(fmt_seconds))
    shown = shown.assign(error=frame.error.str[:120])
    md.append(
        markdown(shown.rename(columns={"best_epoch": "best epoch", "wall_time_s": "wall time"}))
    )

    groups, cells = group_stats(frame, config_keys, metrics)
    repeated = [f"`{k}`" for k in repeat_keys if k in keys]
    if repeated and frame.group.duplicated().any():
        groups.to_csv(out / GROUPED_CSV, index=False)
        written.append(out / GROUPED_CSV)
        over = " and ".join(repeated)
        md += ["", f"## Mean ± std [95% CI] over {over} (completed runs; sample std, Student t)"]
        md += ["", markdown(cells)]
        if plot and sort_metric in metrics:
            written.append(plot_groups(frame, groups, config_keys, sort_metric, out / GROUPS_PNG))
            md += ["", f"![{sort_metric} per group]({GROUPS_PNG})"]
    if baseline:
        compared = list(
            dict.fromkeys([sort_metric, *(["test/acc"] if "test/acc" in metrics else [])])
        )
        md += ["", f"## Compared with `{baseline}`", ""]
        table, cells = compare_groups(frame, groups, config_keys, baseline, compared)
        if table.empty:
            md.append("No group has a baseline group to compare with (same overrides, that value).")
        else:
            table.to_csv(out / COMPARED_CSV, index=False)
            written.append(out / COMPARED_CSV)
            md += [markdown(cells), "", "difference = group − baseline; paired on the seeds/folds "
                   "both have, Welch's t-test where they share fewer than 2; Wilcoxon signed-rank "
                   "from 6 pairs."]  # fmt: skip
    with_curves = [r for r in runs if "val/acc" in r.curves]
    if plot and with_curves:
        written.append(plot_curves(with_curves, keys, out / CURVES_PNG))
        md += ["", f"![val/acc per epoch]({CURVES_PNG})"]
    text = "\n".join(md) + "\n"
    (out / RESULTS_MD).write_text(text)
    return Report(runs, keys, text, written)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="imgcls-report",
        description="Put every run below the given run or multirun dirs side by side: "
        f"writes {RESULTS_CSV}, {RESULTS_MD} and {CURVES_PNG}.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun dirs (searched below)")
    parser.add_argument("--out", type=Path, help="where to write the results (default: first dir)")
    parser.add_argument(
        "--sort", help="metric to sort by, best first (default: optimized_metric); 'none': as found"
    )
    parser.add_argument(
        "--repeat-keys",
        nargs="*",
        default=list(REPEAT_KEYS),
        help="overrides whose runs are repeats, averaged as mean ± std (default: %(default)s)",
    )
    parser.add_argument(
        "--baseline",
        metavar="KEY=VALUE",
        help="compare every group with the group that has this override and the same others "
        "(paired on shared seeds/folds: t-test, Wilcoxon from 6 pairs; else Welch's t-test)",
    )
    parser.add_argument("--no-plot", action="store_true", help=f"do not draw {CURVES_PNG}")
    args = parser.parse_args(argv)
    try:
        report = build_report(
            args.dirs, args.out, args.sort, args.repeat_keys, not args.no_plot, args.baseline
        )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.markdown + "".join(f"\nwrote {path}" for path in report.written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
