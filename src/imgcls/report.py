"""``imgcls-report DIR...``: every run below the given dirs side by side (docs/workflow.md)."""

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import yaml

from imgcls.report_stats import ABSENT, compare_all, group_stats, markdown, plot_groups
from imgcls.utils.checks import read_json

RESULTS_CSV, RESULTS_MD = "results.csv", "results.md"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
REPEAT_KEYS = ("seed", "data.fold")  # runs that differ only by these repeat one configuration
METRIC_ORDER = ["val/acc_best", "val/acc", "val/loss", "test/acc", "test/loss", "train/acc"]
METRIC_ORDER += ["train/loss"]
CURVE_TAGS = ["val/acc", "train/loss"]
LABELS = {"best_epoch": "best epoch", "wall_time_s": "wall time"}  # in results.md


class ReportError(Exception):
    """A problem with the report's input, printed as one line (exit code 2)."""


@dataclass
class Run:
    path: Path
    name: str
    overrides: dict[str, str]  # without resume=, which says how it started
    status: str
    error: str
    metrics: dict[str, float]
    curves: pd.DataFrame  # CURVE_TAGS per epoch
    best_epoch: int | None
    wall_time_s: float | None
    optimized_metric: str | None


def read_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def csv_curves(run_dir: Path) -> pd.DataFrame:
    """``CURVE_TAGS`` per epoch (from 0): the ``plots`` callback's ``training_curves.csv`` (epochs
    from 1), else CSVLogger's ``metrics.csv`` files (later versions win)."""
    plots = run_dir / "plots" / "training_curves.csv"
    if plots.is_file():
        frames = [pd.read_csv(plots).assign(epoch=lambda frame: frame.epoch - 1)]
    else:
        frames = [pd.read_csv(path) for path in sorted(run_dir.rglob("metrics.csv"))]
    frame = pd.concat([f for f in frames if "epoch" in f] or [pd.DataFrame({"epoch": []})])
    return frame.groupby("epoch")[[t for t in CURVE_TAGS if t in frame]].last().rename(index=int)


def wall_time(status: dict) -> float | None:
    """From ``status.json``'s times; a running run: until now."""
    start, end = status.get("started_at"), status.get("finished_at")
    end = time.time() if status.get("status") == "running" else end
    numbers = all(isinstance(t, (int, float)) for t in (start, end))
    return end - start if numbers and end >= start else None


def read_run(path: Path, name: str) -> Run:
    status = read_json(path / "status.json")
    metrics = read_json(path / "metrics.json") or status.get("metrics") or {}
    overrides = {}
    for item in read_yaml(path / OVERRIDES_FILE) or []:
        head, sep, value = str(item).partition("=")
        if head.lstrip("+~") != "resume":  # ~key deletes the key: <deleted>
            overrides[head.lstrip("+~")] = value or "<deleted>" * head.startswith("~")
    curves = csv_curves(path).dropna(how="all").dropna(axis=1, how="all")
    return Run(
        path=path,
        name=name,
        overrides=overrides,
        status=str(status.get("status") or ("completed" if metrics else "unknown")),
        error=" ".join(str(status.get("error", "")).split()),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        curves=curves,
        best_epoch=curves["val/acc"].idxmax() + 1 if "val/acc" in curves else None,
        wall_time_s=wall_time(status),
        optimized_metric=(read_yaml(path / "config.yaml") or {}).get("optimized_metric"),
    )


def find_run_dirs(roots: Sequence[Path]) -> list[Path]:
    """Every run dir at or below ``roots`` (not inside run dirs), in natural order (2 before 10)."""
    found: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise ReportError(f"{root} is not a directory")
        for current, dirs, _ in os.walk(root):
            here = Path(current)
            if (here / OVERRIDES_FILE).is_file() or (here / "config.yaml").is_file():
                found.append(here.resolve())
                dirs.clear()
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(set(found), key=lambda p: re.sub(r"\d+", lambda m: m[0].zfill(9), str(p)))


@dataclass
class Report:
    runs: list[Run]  # as found
    keys: list[str]  # the overrides that differ between the runs
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
    roots, found = [Path(r) for r in roots], find_run_dirs(roots)
    if not found:
        raise ReportError(
            f"no run dirs found below {', '.join(map(str, roots))} (a run dir holds "
            f"{OVERRIDES_FILE} or config.yaml)"
        )
    base = Path(os.path.commonpath([r.resolve() for r in roots]))  # runs are named relative to it
    runs = [read_run(p, p.name if p == base else str(p.relative_to(base))) for p in found]
    key = (baseline or "").partition("=")[0]
    if baseline and not any(key in r.overrides for r in runs):
        raise ReportError(
            f"--baseline {baseline}: no run sets {key}; give KEY=VALUE of an override the runs "
            "differ in"
        )
    configured = (r.optimized_metric for r in runs if r.optimized_metric)
    sort_metric = sort or str(next(configured, "val/acc_best"))
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    if len(runs) > 1:  # those whose values differ
        keys = [k for k in keys if len({r.overrides.get(k, ABSENT) for r in runs}) > 1]
    names = {m for r in runs for m in r.metrics if not m.startswith("lr-")}
    metrics = [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))
    config_keys = [k for k in keys if k not in repeat_keys]
    frame = pd.DataFrame(
        {"run": r.name, "status": r.status, **{k: r.overrides.get(k, ABSENT) for k in keys}}
        | {"epochs": len(r.curves) or None, "best_epoch": r.best_epoch}
        | {"wall_time_s": r.wall_time_s, **{m: r.metrics.get(m) for m in metrics}, "error": r.error}
        | {"group": " ".join(f"{k}={r.overrides.get(k, ABSENT)}" for k in config_keys)}
        | {"repeat": " ".join(r.overrides.get(k, ABSENT) for k in repeat_keys)}
        for r in runs
    )
    frame = frame.astype({"epochs": "Int64", "best_epoch": "Int64"})
    if sort_metric in metrics:  # best first; runs without it last, as found
        frame = frame.sort_values(sort_metric, ascending="loss" in sort_metric, kind="stable")
    out = Path(out_dir or roots[0])
    out.mkdir(parents=True, exist_ok=True)
    frame.iloc[:, :-2].to_csv(out / RESULTS_CSV, index=False)
    written = [out / RESULTS_CSV, out / RESULTS_MD]

    counts = ", ".join(f"{n} {s}" for s, n in frame.status.value_counts(sort=False).items())
    md = [f"# Results: {len(runs)} runs ({counts})", ""]
    md += [f"Sorted by `{sort_metric}`, best first.", ""] if sort_metric != "none" else []
    shown = frame.iloc[:, :-2].assign(error=frame.error.str[:120])
    shown["wall_time_s"] = [
        "" if pd.isna(s) else f"{s:.1f}s" if s < 60 else str(timedelta(seconds=round(s)))
        for s in frame.wall_time_s
    ]
    md.append(markdown(shown.rename(columns=LABELS)))

    done = frame[frame.status == "completed"].drop_duplicates(["group", "repeat"], keep="last")
    groups, cells = group_stats(frame, done, config_keys, metrics)
    repeated = " and ".join(f"`{k}`" for k in repeat_keys if k in keys)
    if repeated and frame.group.duplicated().any():
        groups.to_csv(out / "results_grouped.csv", index=False)
        written.append(out / "results_grouped.csv")
        title = f"## Mean ± std [95% CI] over {repeated} (completed runs; sample std, Student t)"
        md += ["", title, "", markdown(cells)]
        if plot and sort_metric in metrics:
            written.append(plot_groups(done, groups, config_keys, sort_metric, out / "groups.png"))
            md += ["", f"![{sort_metric} per group](groups.png)"]
    if baseline:
        compared = [sort_metric] + [m for m in ["test/acc"] if m in metrics and m != sort_metric]
        md += ["", f"## Compared with `{baseline}`", ""]
        table, lines = compare_all(done, groups, config_keys, baseline, compared)
        if not table.empty:
            table.to_csv(out / "results_compared.csv", index=False)
            written.append(out / "results_compared.csv")
        md += lines
    (out / RESULTS_MD).write_text("\n".join(md) + "\n")
    return Report(runs, keys, "\n".join(md) + "\n", written)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser("imgcls-report", description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun dirs (searched below)")
    parser.add_argument("--out", type=Path, help="where to write the results (default: first dir)")
    parser.add_argument("--sort", help="metric, best first (default: optimized_metric; none)")
    parser.add_argument("--repeat-keys", nargs="*", default=list(REPEAT_KEYS), help="repeats")
    parser.add_argument("--baseline", metavar="KEY=VALUE", help="compare groups with this one")
    parser.add_argument("--no-plot", action="store_true", help="do not draw groups.png")
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
