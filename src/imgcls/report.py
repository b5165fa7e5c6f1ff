"""``imgcls-report DIR...``: every run below the given dirs, side by side (docs/workflow.md).

Writes ``results.csv``, ``results.md`` and ``val_acc_curves.png`` into the first dir or ``--out``;
repeats over ``seed`` / ``data.fold`` are grouped (``results_grouped.csv``, ``groups.png``) and
``--baseline KEY=VALUE`` compares groups (``results_compared.csv``): see ``imgcls.report_stats``.
Out of the training path: only a multirun's end (``imgcls.sweeps``) and the command call it.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imgcls.lifecycle import CONFIG_FILE, OVERRIDES_FILE, RunDir, find_run_dirs
from imgcls.report_stats import (
    ABSENT,
    CURVES_PNG,
    GROUPS_PNG,
    comparison_table,
    comparisons,
    fmt_number,
    fmt_seconds,
    fmt_value,
    group_runs,
    group_table,
    plot_groups,
    plot_val_acc_curves,
    table,
)
from imgcls.utils.runs import Override

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
#: runs differing only by these are repeats of one configuration
REPEAT_KEYS = ("seed", "data.fold")
#: overrides that say how a run was started, not what it computed
IGNORED_OVERRIDES = ("resume",)
METRIC_ORDER = (
    "val/acc_best",
    *(f"{s}/{m}" for s in ("val", "test", "train") for m in ("acc", "loss")),
)
CURVE_TAGS = ("val/acc", "train/loss")
Curves = dict[str, list[tuple[int, float]]]


class ReportError(Exception):
    """A problem with the report's input, printed as one line (exit code 2)."""


@dataclass
class Run:
    path: Path
    name: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    status: str = "unknown"
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    curves: Curves = field(default_factory=dict)
    epochs: int | None = None
    best_epoch: int | None = None
    wall_time_s: float | None = None
    repeat: tuple[str, ...] = ()  # its seed / fold values


# ---------------------------------------------------------------------------------- reading
def csv_curves(run_dir: Path) -> Curves:
    """Per-epoch values of ``CURVE_TAGS`` from a CSVLogger's ``metrics.csv``."""
    curves: dict[str, dict[int, float]] = {}
    for path in sorted(run_dir.rglob("metrics.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if not row.get("epoch"):
                    continue
                for tag in CURVE_TAGS:
                    if row.get(tag):
                        curves.setdefault(tag, {})[int(float(row["epoch"]))] = float(row[tag])
    return {tag: sorted(values.items()) for tag, values in curves.items()}


def tensorboard_curves(run_dir: Path) -> Curves:
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
        for event in events.Scalars("epoch") if "epoch" in tags else ():
            epoch_of_step.setdefault(event.step, int(event.value))
        for tag in tags.intersection(CURVE_TAGS):
            for i, event in enumerate(events.Scalars(tag)):
                curves.setdefault(tag, {})[epoch_of_step.get(event.step, i)] = float(event.value)
    return {tag: sorted(values.items()) for tag, values in curves.items()}


def read_run(run_dir: RunDir) -> Run:
    status, metrics = run_dir.status(), run_dir.metrics()
    overrides = map(Override.parse, run_dir.overrides())  # ~key deletes: <deleted>
    run = Run(
        path=run_dir.path,
        overrides={
            o.key: o.value or ("<deleted>" if o.deletes else "")
            for o in overrides
            if o.key not in IGNORED_OVERRIDES
        },
        status=str(status.get("status") or ("completed" if metrics else "unknown")),
        error=" ".join(str(status.get("error", "")).split()),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        wall_time_s=run_dir.wall_time(),
        curves=csv_curves(run_dir.path) or tensorboard_curves(run_dir.path),
    )
    epochs = {e for tag in CURVE_TAGS for e, _ in run.curves.get(tag, [])}
    run.epochs = len(epochs) if epochs else None
    if run.curves.get("val/acc"):
        run.best_epoch = max(run.curves["val/acc"], key=lambda point: point[1])[0] + 1
    return run


def collect(roots: Sequence[Path]) -> list[Run]:
    """Every run below ``roots``, named by its path relative to their common parent."""
    try:
        runs = [read_run(d) for d in find_run_dirs(roots)]
    except NotADirectoryError as err:
        raise ReportError(str(err)) from None
    if not runs:
        raise ReportError(
            f"no run dirs found below {', '.join(map(str, roots))} (a run dir holds "
            f"{OVERRIDES_FILE} or {CONFIG_FILE})"
        )
    base = Path(os.path.commonpath([str(Path(r).resolve()) for r in roots]))
    for run in runs:
        relative = os.path.relpath(run.path, base)
        run.name = relative if relative != "." else run.path.name
    return runs


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose values are not the same in every run (all keys for one run)."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({run.overrides.get(k, ABSENT) for run in runs}) > 1]


def metric_names(runs: Sequence[Run]) -> list[str]:
    names = {n for run in runs for n in run.metrics if not n.startswith("lr-")}
    first = [n for n in METRIC_ORDER if n in names]
    return first + sorted(names - set(first))


def sort_runs(runs: list[Run], metric: str) -> list[Run]:
    """Best first by ``metric`` (ascending for losses); runs without it keep their order, last."""
    if metric == "none":
        return runs
    sign = 1.0 if "loss" in metric else -1.0
    scored = [r for r in runs if math.isfinite(r.metrics.get(metric, math.nan))]
    others = [r for r in runs if r not in scored]
    return sorted(scored, key=lambda r: sign * r.metrics[metric]) + others


# ---------------------------------------------------------------------------------- the report
@dataclass
class Report:
    runs: list[Run]
    keys: list[str]
    markdown: str
    written: list[Path]


def optuna_summary(roots: Sequence[Path]) -> list[str]:
    """The best trial of each Optuna sweep among ``roots`` (``optimization_results.yaml``)."""
    lines = []
    for path in sorted(p for root in roots for p in root.rglob("optimization_results.yaml")):
        result = yaml.safe_load(path.read_text()) or {}
        if "best_value" in result:
            params = ", ".join(f"{k}={v}" for k, v in (result.get("best_params") or {}).items())
            best = fmt_number(result["best_value"])
            lines.append(f"- Optuna ({path.parent.name}): best value {best} with {params}")
    return [*lines, ""] if lines else []


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
    configured = (RunDir(r.path).config().get("optimized_metric") for r in runs)
    sort_metric = sort or next((str(m) for m in configured if m), "val/acc_best")
    runs = sort_runs(runs, sort_metric)
    if baseline and not any(baseline.partition("=")[0] in r.overrides for r in runs):
        raise ReportError(
            f"--baseline {baseline}: no run sets {baseline.partition('=')[0]}; "
            "give KEY=VALUE of an override the runs differ in"
        )
    keys, metrics = differing_keys(runs), metric_names(runs)
    out = Path(out_dir) if out_dir else roots[0]
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    counts = {s: sum(r.status == s for r in runs) for s in dict.fromkeys(r.status for r in runs)}
    md = [f"# Results: {len(runs)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())})", ""]
    md += optuna_summary(roots)
    md += [f"Sorted by `{sort_metric}`, best first.", ""] if sort_metric != "none" else []
    header = ["run", "status", *keys, "epochs", "best_epoch", "wall_time_s", *metrics, "error"]
    rows = [
        [run.name, run.status, *(run.overrides.get(k, ABSENT) for k in keys), run.epochs]
        + [run.best_epoch, run.wall_time_s, *(run.metrics.get(m) for m in metrics), run.error]
        for run in runs
    ]
    formats = [str, str, *[fmt_value] * len(keys), str, str, fmt_seconds]
    formats += [*[fmt_number] * len(metrics), lambda error: error[:120]]
    md_rows = [["run", "status", *keys, "epochs", "best epoch", "wall time", *metrics, "error"]]
    md_rows += [
        [f(v) if v is not None else "" for f, v in zip(formats, r, strict=True)] for r in rows
    ]
    md.append(table(out / RESULTS_CSV, header, rows, md_rows, written))

    groups = group_runs(runs, keys, repeat_keys)
    repeated = [k for k in repeat_keys if k in keys]
    if repeated and any(len(g.runs) > 1 for g in groups):
        over = " and ".join(f"`{k}`" for k in repeated)
        title = f"## Mean ± std [95% CI] over {over} (completed runs; sample std, Student t)"
        config_keys = [k for k in keys if k not in repeat_keys]
        md.append(f"\n{title}\n\n" + group_table(groups, config_keys, metrics, out, written))
        labels = [", ".join(map(fmt_value, g.overrides.values())) or "all" for g in groups]
        if plot and sort_metric in metrics:
            written.append(plot_groups(groups, sort_metric, labels, out / GROUPS_PNG))
            md += ["", f"![{sort_metric} per group]({GROUPS_PNG})"]
    if baseline:
        compared = [sort_metric] + (["test/acc"] if "test/acc" in metrics else [])
        md += ["", f"## Compared with `{baseline}`", ""]
        md += comparison_table(comparisons(groups, baseline, compared), out, written)
    with_curves = [r for r in runs if r.curves.get("val/acc")]
    if plot and with_curves:
        written.append(plot_val_acc_curves(with_curves, keys, out / CURVES_PNG))
        md += ["", f"![val/acc per epoch]({CURVES_PNG})"]
    markdown = "\n".join(md) + "\n"
    (out / RESULTS_MD).write_text(markdown)
    return Report(runs, keys, markdown, [written[0], out / RESULTS_MD, *written[1:]])


# ---------------------------------------------------------------------------------- CLI
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
