"""Sweeps as a user runs them: grid + joblib, failing jobs, resume, Optuna studies that resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from imgcls.config import CONFIG_DIR, REPO_ROOT

from .conftest import cli_env, run_cli

MISSING = object()
FAST = [
    "data=digits",
    "extras.print_config=false",
    "callbacks=none",
    "logger=csv",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
GRID = ["model.optimizer.lr=0.01,-1", "data.batch_size=16,32"]  # lr=-1: a job that fails


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_job() -> Iterator[None]:
    """Subprocess jobs on one thread: tiny runs are far faster when cores are shared."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def multirun_dirs(root: Path) -> list[Path]:
    return sorted((root / "logs" / "train" / "multiruns").iterdir())


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def overrides_of(run_dir: Path) -> list[str]:
    return yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())


def status_of(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "status.json").read_text())


def report(*dirs: Path) -> list[dict[str, str]]:
    """Run ``python -m imgcls.report`` as a user would; its results.csv rows."""
    result = subprocess.run(
        [sys.executable, "-m", "imgcls.report", *map(str, dirs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| run | status |" in result.stdout  # the markdown table is printed too
    return list(csv.DictReader((dirs[0] / "results.csv").open()))


def start_sweep(root: Path, name: str, *args: str) -> subprocess.Popen:
    """``train.py -m ...`` in ``root`` as a user starts it, without waiting for it; its output
    goes to ``root/<name>.out`` and ``.err`` (files: a full pipe would stall it)."""
    with (root / f"{name}.out").open("w") as out, (root / f"{name}.err").open("w") as err:
        return subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "train.py"), "-m", *args],
            cwd=root,
            env=cli_env(root),
            stdout=out,
            stderr=err,
        )


def finish(proc: subprocess.Popen, root: Path, name: str) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=240)  # a hang fails the test, not the suite
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    stdout, stderr = ((root / f"{name}.{ext}").read_text() for ext in ("out", "err"))
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


#: the sweep started in the same second as the grid (the load test of two parallel sweeps)
PARTNER = ["seed=1,2"]


@pytest.fixture(scope="module")
def parallel_sweeps(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, Path]:
    """Two sweeps started together in one root: a 2 x 2 grid on digits through joblib (2 jobs at
    a time) whose lr=-1 jobs fail, and a sweep of two seeds whose jobs all complete."""
    root = tmp_path_factory.mktemp("grid")
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    procs = {
        "grid": start_sweep(root, "grid", *FAST, *GRID, *joblib),
        "partner": start_sweep(root, "partner", *FAST, *PARTNER),  # basic launcher: cheaper
    }
    result, partner = (finish(proc, root, name) for name, proc in procs.items())
    assert result.returncode == 1, result.stderr[-3000:]  # two jobs failed
    assert partner.returncode == 0, partner.stderr[-3000:]
    (sweep_dir,) = [d for d in multirun_dirs(root) if GRID[0] in task_overrides(d)]
    (partner_dir,) = [d for d in multirun_dirs(root) if PARTNER[0] in task_overrides(d)]
    return sweep_dir, result, partner_dir


def task_overrides(sweep_dir: Path) -> list[str]:
    return yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]


@pytest.fixture(scope="module")
def grid_sweep(parallel_sweeps) -> tuple[Path, subprocess.CompletedProcess]:
    """The 2 x 2 grid through the joblib launcher (2 jobs at a time); lr=-1 jobs fail."""
    sweep_dir, result, _ = parallel_sweeps
    return sweep_dir, result


def test_two_parallel_sweeps_started_together_keep_every_result(parallel_sweeps) -> None:
    sweep_dir, _, partner_dir = parallel_sweeps
    root = sweep_dir.parents[3]
    # distinct sweep dirs, even when started in the same second
    assert len(multirun_dirs(root)) == 2
    jobs = sorted(p for p in partner_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    for job in jobs:
        status = json.loads((job / "status.json").read_text())
        assert status["status"] == "completed", status
        assert json.loads((job / "metrics.json").read_text())["test/acc"] >= 0.0
    # the grid's jobs: each recorded (test_failing_jobs_are_recorded_and_the_sweep_goes_on)
    grid_jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in grid_jobs] == ["0", "1", "2", "3"]
    for job in grid_jobs[:2]:  # lr=0.01: completed, with their metrics
        assert json.loads((job / "metrics.json").read_text())["test/acc"] >= 0.0


def test_grid_sweep_with_joblib_gives_one_run_dir_per_job(grid_sweep) -> None:
    sweep_dir, result = grid_sweep
    launcher = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    dirs = job_dirs(sweep_dir)
    assert [d.name for d in dirs] == ["0", "1", "2", "3"]
    jobs = [dict(o.split("=", 1) for o in overrides_of(d)) for d in dirs]
    assert [(j["model.optimizer.lr"], j["data.batch_size"]) for j in jobs] == [
        ("0.01", "16"),
        ("0.01", "32"),
        ("-1", "16"),
        ("-1", "32"),
    ]


def test_failing_jobs_are_recorded_and_the_sweep_goes_on(grid_sweep) -> None:
    sweep_dir, _ = grid_sweep
    statuses = {d.name: status_of(d) for d in job_dirs(sweep_dir)}
    failed = [n for n, s in statuses.items() if s["status"] == "failed"]
    completed = [n for n, s in statuses.items() if s["status"] == "completed"]
    assert sorted(failed) == ["2", "3"] and sorted(completed) == ["0", "1"]  # lr=-1 jobs last
    for name in failed:
        assert "lr" in statuses[name]["error"]
        assert "Traceback" in (sweep_dir / name / "traceback.txt").read_text()
    for name in completed:
        assert 0.0 <= statuses[name]["metrics"]["val/acc_best"] <= 1.0


def test_a_sweep_ends_with_a_summary_and_exits_1_when_jobs_failed(grid_sweep) -> None:
    sweep_dir, result = grid_sweep
    assert "sweep: 4 jobs: 2 completed, 2 failed, 0 skipped" in result.stdout
    best = max(status_of(d)["metrics"]["val/acc_best"] for d in job_dirs(sweep_dir)[:2])
    assert f"best val/acc_best: {best:.4f} (job " in result.stdout
    assert result.stdout.count("  failed job ") == 2 and "lr must be > 0" in result.stdout
    assert f"report: {sweep_dir / 'results.md'}" in result.stdout
    assert (sweep_dir / "results.md").is_file()
    error = last_line(result.stderr)
    assert error.startswith("error: 2 of 4 sweep jobs failed") and "Traceback" not in result.stderr


def test_report_of_the_grid_shows_four_runs(grid_sweep) -> None:
    sweep_dir, _ = grid_sweep
    rows = report(sweep_dir)
    assert len(rows) == 4
    assert {r["model.optimizer.lr"] for r in rows} == {"0.01", "-1"}
    assert {r["data.batch_size"] for r in rows} == {"16", "32"}
    assert "data" not in rows[0]  # the same in every run: not a column
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("completed", "failed")}
    assert len(by_status["completed"]) == 2 and len(by_status["failed"]) == 2
    assert all(r["model.optimizer.lr"] == "-1" and "lr" in r["error"] for r in by_status["failed"])
    assert all(r["epochs"] == "1" and float(r["val/acc_best"]) >= 0 for r in by_status["completed"])
    assert (sweep_dir / "results.md").read_text().count("| failed |") == 2


def test_resume_skips_finished_jobs_and_reruns_the_others(grid_sweep) -> None:
    sweep_dir, _ = grid_sweep
    finished = {d.name: (d / "metrics.json").stat().st_mtime_ns for d in job_dirs(sweep_dir)[:2]}
    failed = job_dirs(sweep_dir)[2:]
    failed_before = {d.name: (d / "traceback.txt").stat().st_mtime_ns for d in failed}
    result = run_cli(
        "train.py", "-m", *FAST, *GRID, "resume=true", f"hydra.sweep.dir={sweep_dir}",
        cwd=sweep_dir.parents[3],
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "sweep: 4 jobs: 0 completed, 2 failed, 2 skipped" in result.stdout
    assert output.count("already completed: skipped (resume=true)") == 2
    assert output.count("job failed, the sweep goes on") == 2  # rerun, and failing again
    for name, mtime in finished.items():
        assert (sweep_dir / name / "metrics.json").stat().st_mtime_ns == mtime  # not retrained
    for name, mtime in failed_before.items():
        assert (sweep_dir / name / "traceback.txt").stat().st_mtime_ns > mtime
    assert len(job_dirs(sweep_dir)) == 4


def study_trials(sweep_dir: Path, name: str = "mnist_optuna") -> list:
    import optuna

    from hydra_plugins.imgcls_sweeper import optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    return optuna.load_study(study_name=name, storage=storage).trials


@pytest.mark.slow
def test_a_search_whose_trials_all_crash_fails_in_one_line_and_the_study_continues(
    tmp_path: Path,
) -> None:
    """Issue 20 item 6: every trial crashing ended in Optuna's ``Record does not exist``."""
    search = ["hparams_search=mnist_optuna", *FAST]  # hydra.mode=MULTIRUN: no -m needed
    crash = ["hydra.sweeper.n_trials=2", "+trainer.no_such_argument=1"]
    first = run_cli("train.py", *search, *crash, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "Traceback" not in first.stderr and "Record does not exist" not in first.stderr
    (sweep_dir,) = multirun_dirs(tmp_path)
    crashed = job_dirs(sweep_dir)
    assert len(crashed) == 2 and all(status_of(t)["status"] == "failed" for t in crashed)
    error = last_line(first.stderr)
    assert error.startswith("error: 2 of 2 trials failed (at most 50% allowed): ")
    assert all(t.name in error for t in crashed) and "no_such_argument" in error
    traceback_file = error.split("(traceback: ")[1].split(")")[0]
    assert "Traceback" in Path(traceback_file).read_text()
    assert [t.state.name for t in study_trials(sweep_dir)] == ["FAIL", "FAIL"]

    # same sweep dir: the study is loaded and grows by two trials that train
    second = run_cli(
        "train.py",
        *search,
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "sweep: 2 jobs: 2 completed, 0 failed, 0 skipped" in second.stdout  # this call's only
    trials = study_trials(sweep_dir)
    assert [t.state.name for t in trials] == ["FAIL"] * 2 + ["COMPLETE"] * 2
    runs = [r for r in job_dirs(sweep_dir) if r not in crashed]  # none reused
    assert len(runs) == 2 and all(status_of(r)["status"] == "completed" for r in runs)
    # every trial's sampled lr is the lr its run was trained with
    run_lrs = {
        float(o.split("=")[1])
        for r in runs
        for o in overrides_of(r)
        if o.startswith("model.optimizer.lr=")
    }
    assert run_lrs == {t.params["model.optimizer.lr"] for t in trials[2:]}
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(t.value for t in trials[2:]))
    rows = report(sweep_dir)
    assert sorted(r["status"] for r in rows) == ["completed"] * 2 + ["failed"] * 2
    assert all("no_such_argument" in r["error"] for r in rows if r["status"] == "failed")


@pytest.mark.parametrize(
    "search", sorted(p.stem for p in (CONFIG_DIR / "hparams_search").glob("*.yaml"))
)
def test_hparams_search_configs_compose_into_an_optuna_search_space(search: str) -> None:
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train", [f"hparams_search={search}", "data=digits"], return_hydra_config=True
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.imgcls_sweeper.OptunaSearch"
    assert sweeper.direction == "maximize" and sweeper.max_failure_rate == 0.5
    assert sweeper.sampler.seed is not None and sweeper.study_name == search
    assert sweeper.storage.url.endswith("/optuna.db")
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed and len(space) >= 3
    assert "model/optimizer" in space  # the optimizer itself is searched
    for key in (k for k in space if "/" not in k):  # a typo would silently add a new key
        assert OmegaConf.select(cfg, key, default=MISSING) is not MISSING, key
    if search == "binary_optuna":
        assert {"model.net.dropout", "model.net.activation"} <= set(space)
        assert cfg.model.num_classes == 2


def _fake_job(sweep_dir: Path, name: str, status: str) -> None:
    run = sweep_dir / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n")
    metrics = {"val/acc_best": 0.5} if status == "completed" else {}
    error = {"error": f"boom {name}"} if status == "failed" else {}
    (run / "status.json").write_text(json.dumps({"status": status, "metrics": metrics, **error}))


@pytest.mark.parametrize(
    ("statuses", "sweeper", "fails"),
    [
        (["completed", "failed"], {"n_trials": 2, "max_failure_rate": 0.5}, False),
        (["completed", "failed", "failed"], {"n_trials": 3, "max_failure_rate": 0.5}, True),
        (["completed", "failed"], {}, True),  # a grid: any failed job fails it
    ],
)
def test_a_sweep_fails_when_more_than_its_failure_rate_of_jobs_failed(
    tmp_path: Path, capsys, statuses: list[str], sweeper: dict, fails: bool
) -> None:
    from imgcls.sweeps import SweepSummary

    summary = SweepSummary()
    sweep_dir = tmp_path / "sweep"
    for i, status in enumerate(statuses):
        _fake_job(sweep_dir, str(i), status)
    hydra = {"sweep": {"dir": str(sweep_dir)}, "sweeper": sweeper}
    config = OmegaConf.create({"optimized_metric": "val/acc_best", "hydra": hydra})
    if not fails:
        summary.on_multirun_end(config)
        assert "error" not in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as exit_:
        summary.on_multirun_end(config)
    assert exit_.value.code == 1
    error = capsys.readouterr().err.strip()
    noun = "trials" if sweeper else "sweep jobs"
    assert error.startswith(f"error: {len(statuses) - 1} of {len(statuses)} {noun} failed")
    assert "first error: boom 1" in error and ", ".join(map(str, range(1, len(statuses)))) in error
