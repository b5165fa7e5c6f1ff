"""logger=mlflow and logger=wandb, read back with MLflow's client and from W&B's offline files."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgcls.train import train

pytest.importorskip("mlflow")
pytest.importorskip("wandb")

LOGGED = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/loss"}


@pytest.fixture(scope="module")
def many_loggers_run(tmp_path_factory) -> Iterator[tuple[Path, dict[str, float]]]:
    """One short digits run with logger=many_loggers, W&B without any API key (offline)."""
    from .conftest import compose_config

    run_dir = tmp_path_factory.mktemp("loggers_run")
    saved = dict(os.environ)
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        os.environ.pop(name, None)
    os.environ.update(
        NETRC=str(run_dir / "no-netrc"),  # no `wandb login` either
        WANDB_SILENT="true",
        **{
            f"WANDB_{kind}_DIR": str(run_dir / f"wandb-{kind}")
            for kind in ("CONFIG", "CACHE", "DATA")
        },
    )
    overrides = [
        "data=digits",
        "logger=many_loggers",
        "callbacks=none",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=2",
        "seed=4",
    ]
    try:
        yield run_dir, train(compose_config("train", overrides, run_dir))
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_mlflow_store_holds_the_runs_metrics_and_params(many_loggers_run) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, metrics = many_loggers_run
    store = run_dir / "logs" / "mlflow.db"  # the local store under the log dir
    assert store.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["run_dir"] == str(run_dir)
    assert run.info.status == "FINISHED"
    logged = run.data.metrics
    assert set(logged) >= LOGGED
    assert logged["test/acc"] == pytest.approx(metrics["test/acc"])
    assert logged["hp/test_acc"] == pytest.approx(metrics["test/acc"])  # the final metrics
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.step for m in history] == [4, 9]  # once per epoch, at the global step
    params = run.data.params
    assert float(params["lr"]) == configured_lr(run_dir)
    assert params["batch_size"] == "16" and params["seed"] == "4"
    assert params["net"] == "TinyNet" and params["data"] == "DigitsDataModule"


def configured_lr(run_dir: Path) -> float:
    from omegaconf import OmegaConf

    return OmegaConf.load(run_dir / "config.yaml").model.optimizer.lr


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline ``run-<id>.wandb`` file (a LevelDB-style log)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]  # 1 full, 2 first, 3 middle, 4 last
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield Record.FromString(pending)
            pending = b""


@pytest.mark.slow
def test_wandb_runs_offline_without_api_key_and_its_files_hold_the_metrics(
    many_loggers_run,
) -> None:
    import json

    run_dir, metrics = many_loggers_run
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    (log_file,) = offline_run.glob("run-*.wandb")
    history: dict[str, list[float]] = {}
    config: dict[str, Any] = {}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    assert set(history) >= LOGGED
    assert len(history["val/acc"]) == 2  # one value per epoch
    assert history["test/acc"][-1] == pytest.approx(metrics["test/acc"])
    assert history["hp/test_acc"][-1] == pytest.approx(metrics["test/acc"])
    assert config["lr"] == configured_lr(run_dir)
    assert config["batch_size"] == 16 and config["seed"] == 4


@pytest.mark.slow
def test_tensorboard_and_csv_still_log_beside_them(many_loggers_run) -> None:
    run_dir, _ = many_loggers_run
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "val/acc" in (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]


def test_wandb_goes_online_only_with_a_key_or_an_explicit_mode(monkeypatch, tmp_path) -> None:
    from hydra.utils import instantiate

    from imgcls import compose

    def offline(*overrides: str) -> bool:
        cfg = compose(["logger=wandb", *overrides], output_dir=str(tmp_path))
        return instantiate(cfg.logger.wandb)._offline

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert offline()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password k" + "0" * 39)
    assert not offline()  # `wandb login` stored a key
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert not offline()
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own switch is left to W&B
    assert not offline()
    assert offline("logger.wandb.offline=true")


def test_a_missing_extra_is_one_line_naming_it(monkeypatch) -> None:
    import importlib.util

    from imgcls import compose
    from imgcls.utils.checks import bad_value

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a),
    )
    message = bad_value(compose(["logger=mlflow"], output_dir="x"))
    assert re.fullmatch(r"logger=mlflow needs the mlflow package.*\[mlflow\]'", message)
    assert bad_value(compose(["logger=wandb"], output_dir="x")) is None
