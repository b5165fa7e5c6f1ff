"""imgcls-report on hand-made run dirs: differing overrides, statuses, curves, mean ± std."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from imgcls.report import (
    RESULTS_CSV,
    RESULTS_MD,
    build_report,
    csv_curves,
    find_run_dirs,
    main,
)
from imgcls.report_stats import fmt_value

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(
    path: Path,
    overrides: list[str],
    status: str = "completed",
    metrics: dict[str, float] | None = None,
    val_acc: list[float] | None = None,
    error: str = "",
    seconds: float = 30.0,
) -> Path:
    """A run dir as train.py leaves it (CSVLogger curves), started ``seconds`` before it ended."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "config.yaml").write_text("optimized_metric: val/acc_best\n")
    start = 1_700_000_000.0
    payload: dict = {"status": status, "started_at": start, "finished_at": start + seconds}
    if metrics:
        payload["metrics"] = metrics
        (path / "metrics.json").write_text(json.dumps(metrics))
    if error:
        payload["error"] = error
    (path / "status.json").write_text(json.dumps(payload))
    if val_acc:
        rows = ["epoch,step,train/loss,val/acc,val/loss"]
        for epoch, acc in enumerate(val_acc):
            rows += [f"{epoch},{epoch * 10 + 9},,{acc},1.0", f"{epoch},{epoch * 10 + 9},2.0,,"]
        (path / "csv").mkdir()
        (path / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
    return path


def metrics_of(acc: float) -> dict[str, float]:
    return {"val/acc_best": acc, "val/acc": acc - 0.01, "test/acc": acc - 0.02, "lr-Adam": 0.001}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two learning rates x two seeds (completed), one failed run, one still running."""
    root = tmp_path / "multirun"
    common = ["data=digits", "trainer.max_epochs=3"]
    accs = {("0.1", "1"): 0.80, ("0.1", "2"): 0.84, ("0.01", "1"): 0.90, ("0.01", "2"): 0.96}
    for i, ((lr, seed), acc) in enumerate(accs.items()):
        make_run(
            root / str(i),
            [*common, f"model.optimizer.lr={lr}", f"seed={seed}"],
            metrics=metrics_of(acc),
            val_acc=[acc - 0.2, acc, acc - 0.05],
        )
    make_run(
        root / "4",
        [*common, "model.optimizer.lr=-1", "seed=1"],
        status="failed",
        error="model.optimizer.lr must be > 0, got -1",
    )
    make_run(root / "10", [*common, "model.optimizer.lr=1.0", "seed=1"], status="running")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_report_puts_every_run_side_by_side(sweep: Path) -> None:
    report = build_report([sweep])
    rows = read_rows(sweep / RESULTS_CSV)
    assert len(rows) == 6
    # only what differs: lr and seed, not data or max_epochs; the lr monitor is left out
    assert report.keys == ["model.optimizer.lr", "seed"]
    assert list(rows[0])[:4] == ["run", "status", "model.optimizer.lr", "seed"]
    assert "data" not in rows[0] and "lr-Adam" not in rows[0]
    # best first by the runs' optimized_metric; runs without it last, in directory order
    assert [r["run"] for r in rows] == ["3", "2", "1", "0", "4", "10"]
    assert float(rows[0]["val/acc_best"]) == pytest.approx(0.96)
    assert rows[0]["epochs"] == "3" and rows[0]["best_epoch"] == "2"
    assert float(rows[0]["wall_time_s"]) == pytest.approx(30.0)
    failed = rows[4]
    assert failed["status"] == "failed" and "lr must be > 0" in failed["error"]
    assert failed["val/acc_best"] == ""
    assert rows[5]["status"] == "running"


def test_repeats_over_seeds_are_grouped_with_mean_and_std(sweep: Path) -> None:
    build_report([sweep])
    grouped = {r["model.optimizer.lr"]: r for r in read_rows(sweep / "results_grouped.csv")}
    assert set(grouped) == {"0.1", "0.01", "-1", "1.0"}
    best = grouped["0.01"]
    assert best["runs"] == "2" and best["completed"] == "2"
    assert float(best["val/acc_best_mean"]) == pytest.approx(0.93)
    assert float(best["val/acc_best_std"]) == pytest.approx(statistics.stdev([0.90, 0.96]))
    assert grouped["-1"]["completed"] == "0" and grouped["-1"]["val/acc_best_mean"] == ""
    markdown = (sweep / RESULTS_MD).read_text()
    assert "# Results: 6 runs (4 completed, 1 failed, 1 running)" in markdown
    assert "Mean ± std [95% CI] over `seed`" in markdown
    assert "| 0.01 | 2 | 2 | 0.9300 ± 0.0424 [0.5488, 1.3112] |" in markdown  # t(1) = 12.71


def test_run_dirs_are_found_below_several_roots_and_not_inside_runs(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a" / "runs" / "x", ["seed=1"], metrics=metrics_of(0.5))
    b = make_run(tmp_path / "b" / "2", ["seed=2"], metrics=metrics_of(0.6))
    (a / "nested").mkdir()
    (a / "nested" / "config.yaml").write_text("{}")  # inside a run: not a run of its own
    found = find_run_dirs([tmp_path / "a", tmp_path / "b"])
    assert found == [a.resolve(), b.resolve()]
    out = tmp_path / "out"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--no-plot"]) == 0
    rows = read_rows(out / RESULTS_CSV)
    assert [r["run"] for r in rows] == ["b/2", "a/runs/x"]  # relative to the common parent
    assert not list(out.glob("*.png"))


def test_curves_of_the_plots_callback_are_read_from_epoch_0(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    rows = ["epoch,train/loss,val/loss,train/acc,val/acc", "1,2.0,1.5,0.4,0.5", "2,1.0,1.2,,0.7"]
    (run / "plots" / "training_curves.csv").write_text("\n".join([*rows, "3,0.5,1.1,0.8,0.6"]))
    (run / "csv").mkdir()  # a CSVLogger's file too: the plots callback's wins
    (run / "csv" / "metrics.csv").write_text("epoch,val/acc\n0,0.1\n")
    curves = csv_curves(run)
    assert list(curves.index) == [0, 1, 2] and list(curves.columns) == ["val/acc", "train/loss"]
    assert list(curves["val/acc"]) == pytest.approx([0.5, 0.7, 0.6])
    assert list(curves["train/loss"]) == pytest.approx([2.0, 1.0, 0.5])
    make_run(tmp_path / "sweep" / "0", ["seed=1"], metrics=metrics_of(0.7))
    (tmp_path / "sweep" / "0" / "plots").mkdir()
    (run / "plots" / "training_curves.csv").rename(tmp_path / "sweep/0/plots/training_curves.csv")
    (row,) = read_rows(build_report([tmp_path / "sweep"], plot=False).written[0])
    assert row["epochs"] == "3" and row["best_epoch"] == "2"


def test_no_runs_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no run dirs found below")


def test_long_sampled_values_are_shortened_for_display() -> None:
    assert fmt_value("0.014783979348659031") == "0.01478"
    assert fmt_value("0.01") == "0.01" and fmt_value("adam") == "adam" and fmt_value("-1") == "-1"


# ----------------------------------------------------------------------------- statistics
BASE = [0.90, 0.92, 0.91, 0.93, 0.89, 0.94]  # width=16, seeds 1-6
LOWER = [0.02, 0.03, 0.01, 0.04, 0.02, 0.03]  # width=8 is this much worse on each seed
WIDE = [0.91, 0.95, 0.90]  # width=32, seeds 7-9: no seed shared with the baseline


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    runs = [(16, s, v) for s, v in zip(range(1, 7), BASE, strict=True)]
    runs += [(8, s, b - d) for s, b, d in zip(range(1, 7), BASE, LOWER, strict=True)]
    runs += [(32, s, v) for s, v in zip(range(7, 10), WIDE, strict=True)]
    for i, (width, seed, acc) in enumerate(runs):
        metrics = {"val/acc_best": acc, "test/acc": acc - 0.01 * (seed % 2)}
        make_run(root / str(i), [f"model.net.width={width}", f"seed={seed}"], metrics=metrics)
    return root


def test_groups_have_mean_std_and_student_t_interval(study: Path) -> None:
    from scipy import stats

    build_report([study], baseline="model.net.width=16")
    grouped = {r["model.net.width"]: r for r in read_rows(study / "results_grouped.csv")}
    for width, values in (("16", BASE), ("32", WIDE)):
        row = grouped[width]
        low, high = stats.t.interval(
            0.95, len(values) - 1, loc=statistics.fmean(values), scale=stats.sem(values)
        )
        assert int(row["val/acc_best_n"]) == len(values)
        assert float(row["val/acc_best_mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["val/acc_best_std"]) == pytest.approx(statistics.stdev(values))
        assert float(row["val/acc_best_ci_low"]) == pytest.approx(low)
        assert float(row["val/acc_best_ci_high"]) == pytest.approx(high)
    assert (study / "groups.png").read_bytes()[:8] == PNG_SIGNATURE


def test_baseline_comparison_is_paired_on_shared_seeds_else_welch(study: Path) -> None:
    from scipy import stats

    report = build_report([study], baseline="model.net.width=16")
    rows = read_rows(study / "results_compared.csv")
    compared = {(r["group"], r["metric"]): r for r in rows}
    assert len(rows) == 4  # width 8 and 32, on val/acc_best and test/acc
    paired = compared[("model.net.width=8", "val/acc_best")]
    assert paired["baseline"] == "model.net.width=16" and paired["test"] == "paired"
    diffs = [-d for d in LOWER]
    low, high = stats.t.interval(
        0.95, len(diffs) - 1, loc=statistics.fmean(diffs), scale=stats.sem(diffs)
    )
    assert int(paired["n"]) == 6
    assert float(paired["difference"]) == pytest.approx(statistics.fmean(diffs))
    assert float(paired["ci_low"]) == pytest.approx(low)
    assert float(paired["ci_high"]) == pytest.approx(high)
    worse = [b - d for b, d in zip(BASE, LOWER, strict=True)]
    assert float(paired["p_t"]) == pytest.approx(stats.ttest_rel(worse, BASE).pvalue)
    assert float(paired["p_wilcoxon"]) == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert paired["verdict"] == "significant at 0.05"
    welch = compared[("model.net.width=32", "val/acc_best")]
    result = stats.ttest_ind(WIDE, BASE, equal_var=False)
    interval = result.confidence_interval(0.95)
    assert welch["test"] == "Welch (unpaired)" and welch["p_wilcoxon"] == ""
    assert float(welch["p_t"]) == pytest.approx(result.pvalue)
    assert float(welch["difference"]) == pytest.approx(
        statistics.fmean(WIDE) - statistics.fmean(BASE)
    )
    assert float(welch["ci_low"]) == pytest.approx(interval.low)
    assert float(welch["ci_high"]) == pytest.approx(interval.high)
    assert welch["verdict"] == "not significant at 0.05"
    assert "| model.net.width=32 | model.net.width=16 | val/acc_best | Welch (unpaired) |" in (
        report.markdown
    )
    assert "not significant at 0.05" in report.markdown


def test_a_baseline_no_run_sets_is_a_one_line_error(study: Path, capsys) -> None:
    assert main([str(study), "--baseline", "model.net.depth=3", "--no-plot"]) == 2
    assert capsys.readouterr().err.startswith("error: --baseline model.net.depth=3: no run sets")
