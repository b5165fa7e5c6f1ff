"""``imgcls-report DIR...``: every run below the given dirs, side by side.

A run dir is a dir holding ``.hydra/overrides.yaml`` or ``config.yaml`` (what ``train.py``
writes). For each run the report gives the overrides that differ between the runs, its status
(completed / failed / running), epochs, wall time, final and best metrics and, for a failed run,
its error. It writes ``results.csv``, ``results.md`` (markdown tables; runs that differ only by
``seed`` or ``data.fold`` are also grouped with mean ± std and a 95% CI, ``results_grouped.csv``,
``groups.png``; ``--baseline KEY=VALUE`` adds paired tests, ``results_compared.csv``: see
``imgcls.report_stats``) and ``val_acc_curves.png`` into the first given dir, or ``--out``.
Out of the training path: only a multirun's end (``imgcls.sweeps``) and the command call it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imgcls.report_runs import (
    ABSENT,
    CURVES_PNG,
    ReportError,
    Run,
    collect,
    differing_keys,
    fmt_number,
    fmt_seconds,
    fmt_value,
    md_table,
    metric_names,
    optimized_metric,
    plot_val_acc_curves,
    run_rows,
    sort_runs,
    write_csv,
)
from imgcls.report_stats import (
    GROUPS_PNG,
    Group,
    comparison_tables,
    comparisons,
    group_runs,
    group_tables,
    plot_groups,
)

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
#: runs differing only by these are repeats of one configuration
REPEAT_KEYS = ("seed", "data.fold")


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
    baseline: str | None = None,
) -> Report:
    """Collect the runs below ``roots`` and write the result files into ``out_dir``."""
    roots = [Path(r) for r in roots]
    runs = collect(roots)
    sort_metric = sort or optimized_metric(runs)
    runs = sort_runs(runs, sort_metric)
    if baseline and not any(baseline.partition("=")[0] in r.overrides for r in runs):
        raise ReportError(
            f"--baseline {baseline}: no run sets {baseline.partition('=')[0]}; "
            "give KEY=VALUE of an override the runs differ in"
        )
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
        over = " and ".join(f"`{k}`" for k in repeated)
        md += [
            "",
            f"## Mean ± std [95% CI] over {over} (completed runs; sample std, Student t)",
            "",
        ]
        md += group_tables(groups, keys, repeat_keys, metrics, out, report.written)
        labels = [", ".join(map(fmt_value, g.overrides.values())) or "all" for g in groups]
        if plot and sort_metric in metrics:
            report.written.append(plot_groups(groups, sort_metric, labels, out / GROUPS_PNG))
            md += ["", f"![{sort_metric} per group]({GROUPS_PNG})"]
    if baseline:
        compared = [sort_metric] + (["test/acc"] if "test/acc" in metrics else [])
        md += ["", f"## Compared with `{baseline}`", ""]
        md += comparison_tables(comparisons(groups, baseline, compared), out, report.written)

    if plot and any(r.curves.get("val/acc") for r in runs):
        plot_val_acc_curves(runs, keys, out / CURVES_PNG)
        report.written.append(out / CURVES_PNG)
        md += ["", f"![val/acc per epoch]({CURVES_PNG})"]
    report.markdown = "\n".join(md) + "\n"
    (out / RESULTS_MD).write_text(report.markdown)
    report.written.insert(1, out / RESULTS_MD)
    return report


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
    parser.add_argument(
        "--baseline",
        metavar="KEY=VALUE",
        help="compare every group with the group that has this override and the same others "
        "(paired on shared seeds/folds: t-test, Wilcoxon from 6 pairs; else Welch's t-test)",
    )
    parser.add_argument("--no-plot", action="store_true", help=f"do not draw {CURVES_PNG}")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = build_report(
            args.dirs, args.out, args.sort, args.repeat_keys, not args.no_plot, args.baseline
        )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.markdown)
    for path in report.written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
