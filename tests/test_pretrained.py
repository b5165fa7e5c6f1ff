"""model=torchvision / model=timm: weights, head and first-conv surgery, the weights' preprocessing,
freezing and the fine-tuning schedule, offline errors, and a fine-tuning run end to end.

Nothing is downloaded: weights are state_dicts the tests save (a local file, or a file put where
torch's hub cache keeps it, with TORCH_HOME pointing at a tmp dir).
"""

from __future__ import annotations

import csv
import urllib.error
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from hydra.utils import instantiate
from torch import nn

from imgcls.callbacks.finetuning import HeadFirstFinetuning
from imgcls.models.classifier import ImageClassifier
from imgcls.models.nets.pretrained import (
    adapt_conv_weight,
    check_normalisation,
    timm_net,
    torchvision_net,
)
from imgcls.utils.errors import UserError

from .conftest import compose_config, run_cli
from .test_folder import write_flat_folder

RESNET18_FILE = "resnet18-f37072fd.pth"  # IMAGENET1K_V1, as torch's hub cache names it


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache: nothing cached, and nothing may be downloaded."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def saved_resnet18(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def assert_backbone_equal(net: nn.Module, state: dict[str, torch.Tensor], skip: tuple) -> None:
    loaded = net.state_dict()
    compared = [k for k in state if not k.startswith(skip)]
    assert compared and all(torch.equal(loaded[k], state[k]) for k in compared)


# ------------------------------------------------------------------ weights
def test_local_weights_file_is_loaded_and_head_and_first_conv_adapt(tmp_path: Path) -> None:
    state = saved_resnet18(tmp_path / "r18.pth")
    net = torchvision_net(
        "resnet18", num_classes=5, in_channels=1, weights=str(tmp_path / "r18.pth")
    )
    assert_backbone_equal(net, state, skip=("fc.", "conv1."))
    torch.testing.assert_close(net.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert net.head_name == "fc" and net.fc.out_features == 5
    assert not torch.equal(net.fc.weight[:5], state["fc.weight"][:5])  # a fresh head
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    three = torchvision_net("resnet18", num_classes=1000, weights=str(tmp_path / "r18.pth"))
    assert_backbone_equal(three, state, skip=("fc.",))  # 3 channels: the filters as they were


def test_weights_name_reads_torch_hub_cache(torch_home: Path) -> None:
    state = saved_resnet18(torch_home / "hub" / "checkpoints" / RESNET18_FILE)
    net = torchvision_net("resnet18", num_classes=3, weights="IMAGENET1K_V1")
    assert_backbone_equal(net, state, skip=("fc.",))
    full_name = torchvision_net("resnet18", 3, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert_backbone_equal(full_name, state, skip=("fc.",))


def test_missing_cached_weights_are_one_line_naming_the_file(torch_home: Path, monkeypatch) -> None:
    with pytest.raises(UserError) as err:
        torchvision_net("resnet18", num_classes=3, weights="IMAGENET1K_V1")
    message = str(err.value)
    expected = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    assert "\n" not in message and str(expected) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert not expected.exists()  # nothing was downloaded

    # download=true without internet: says the download failed (not "cannot be read")
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"downloading https://\S+ failed \(<urlopen error"):
        torchvision_net("resnet18", num_classes=3, weights="IMAGENET1K_V1", download=True)


@pytest.mark.slow  # ~10-20 s: a train.py process
def test_offline_cli_run_stops_before_any_image_is_decoded(tmp_path, torch_home) -> None:
    root = write_flat_folder(tmp_path / "pics", n=4)
    result = run_cli(
        "train.py",
        "experiment=folder_finetune",
        f"data.root={root}",
        "extras.print_config=false",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: model.net.weights=IMAGENET1K_V1 needs " + RESNET18_FILE)
    assert str(torch_home / "hub" / "checkpoints" / RESNET18_FILE) in lines[-1]
    assert "decoding" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet19"}, "not a torchvision classification model .*resnet18"),
        ({"name": "resnet18", "weights": "IMAGENET1K_V9"}, "IMAGENET1K_V1, DEFAULT"),
        ({"name": "resnet18", "weights": "/no/such/file.pth"}, "no such file"),
        ({"name": "vit_b_16", "image_size": 160}, "at least 224 px"),
    ],
)
def test_bad_names_and_files_are_user_errors(kwargs, match: str) -> None:
    with pytest.raises(UserError, match=match):
        torchvision_net(num_classes=3, **kwargs)


def test_a_file_of_another_architecture_names_the_mismatch(tmp_path: Path) -> None:
    saved_resnet18(tmp_path / "r18.pth")
    with pytest.raises(UserError, match="does not fit torchvision's resnet34: missing keys"):
        torchvision_net("resnet34", num_classes=3, weights=str(tmp_path / "r18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read as a state_dict"):
        torchvision_net("resnet18", num_classes=3, weights=str(tmp_path / "junk.pth"))


# ------------------------------------------------------------------ surgery on any architecture
def test_first_conv_filters_sum_for_grey_and_repeat_scaled_for_more_channels() -> None:
    weight = torch.randn(8, 3, 3, 3)
    grey = torch.rand(1, 1, 9, 9)
    old = nn.functional.conv2d(grey.expand(1, 3, 9, 9), weight)
    torch.testing.assert_close(nn.functional.conv2d(grey, adapt_conv_weight(weight, 1)), old)
    six = adapt_conv_weight(weight, 6)  # each RGB filter twice, halved: same grey response
    torch.testing.assert_close(nn.functional.conv2d(grey.expand(1, 6, 9, 9), six), old)
    four = adapt_conv_weight(weight, 4)
    torch.testing.assert_close(four, torch.cat([weight, weight[:, :1]], dim=1) * 0.75)


def _surgery_holds(name: str, device: str) -> None:
    with torch.device(device):
        net = torchvision_net(name, num_classes=7, in_channels=2)
    head = net.get_submodule(net.head_name)
    assert getattr(head, "out_features", getattr(head, "out_channels", None)) == 7
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].in_channels == 2 and not any(
        isinstance(m, nn.Linear) and m.out_features == 1000 for m in net.modules()
    )


@pytest.mark.parametrize(
    "name", ["mobilenet_v3_small", "squeezenet1_0", "googlenet", "vit_b_16", "convnext_tiny"]
)
def test_head_and_first_conv_adapt_across_architectures(name: str) -> None:
    _surgery_holds(name, "meta")  # shapes only: no memory, no initialisation cost


@pytest.mark.slow
def test_every_torchvision_classification_model_adapts() -> None:
    for name in torchvision.models.list_models(module=torchvision.models):
        if not name.startswith("regnet"):
            _surgery_holds(name, "meta")
    _surgery_holds("regnet_x_400mf", "cpu")  # regnets' initialisation cannot run on "meta"


# ------------------------------------------------------------------ timm
def test_timm_by_name_from_a_local_file(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    state = timm.create_model("mobilenetv3_small_050").state_dict()
    torch.save(state, tmp_path / "mnv3.pth")
    net = timm_net("mobilenetv3_small_050", 4, in_channels=1, weights=str(tmp_path / "mnv3.pth"))
    assert_backbone_equal(net, state, skip=("classifier.", "conv_stem."))
    torch.testing.assert_close(
        net.conv_stem.weight, state["conv_stem.weight"].sum(dim=1, keepdim=True)
    )
    assert net.head_name == "classifier" and net.classifier.out_features == 4
    assert net.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    with pytest.raises(UserError, match="no such file; timm's weights are read from a local"):
        timm_net("resnet18", 4, weights="resnet18.a1_in1k")
    with pytest.raises(UserError, match="not a timm classification model"):
        timm_net("resnet_eighteen", 4)


# ------------------------------------------------------------------ the data's normalisation
def test_pretrained_weights_with_other_normalisation_log_one_warning(tmp_path, caplog) -> None:
    saved_resnet18(tmp_path / "r18.pth")
    net = torchvision_net("resnet18", 3, in_channels=1, weights=str(tmp_path / "r18.pth"))
    with caplog.at_level("WARNING", logger="imgcls.models.nets.pretrained"):
        check_normalisation(net, [0.449], [0.226])  # ImageNet's, averaged for one channel
        assert caplog.records == []
        check_normalisation(net, [0.5], [0.5])
        check_normalisation(torchvision_net("resnet18", 3, in_channels=1), [0.5], [0.5])
    assert len(caplog.records) == 1  # the random-init net has nothing to expect
    assert "expect data.mean=[0.449" in caplog.text and "uses mean=[0.5] std=[0.5]" in caplog.text


def test_finetune_experiment_sets_the_weights_preprocessing(tmp_path) -> None:
    root = write_flat_folder(tmp_path / "pics", n=2)
    cfg = compose_config("train", ["experiment=folder_finetune", f"data.root={root}"], tmp_path)
    assert cfg.data.image_size == 224 and cfg.model.image_size == 224
    assert list(cfg.data.mean) == [0.485, 0.456, 0.406]
    assert list(cfg.data.std) == [0.229, 0.224, 0.225]
    plain = compose_config(
        "train", ["data=folder", f"data.root={root}", "model=torchvision"], tmp_path
    )
    assert plain.data.image_size is None and plain.model.image_size == 64  # the folder's default


# ------------------------------------------------------------------ freezing and the schedule
class Snapshots(pl.Callback):
    """The net's parameters and batch-norm statistics when training starts and after each epoch,
    and the optimizer's learning rates during each epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.lrs: list[list[float]] = []

    def _snapshot(self, pl_module) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

    def on_train_start(self, trainer, pl_module) -> None:
        self._snapshot(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._snapshot(pl_module)
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def tiny_fit(tmp_path: Path, epochs: int, callbacks=(), **model_kwargs) -> Snapshots:
    cfg = compose_config(
        "train",
        ["data=digits", "data.batch_size=16", "model=torchvision", "model.optimizer.lr=0.01"],
        tmp_path,
    )
    model = instantiate(cfg.model, **model_kwargs)
    snapshots = Snapshots()
    trainer = pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, snapshots],
    )
    trainer.fit(model, datamodule=instantiate(cfg.data))
    return snapshots


def changed(before: dict, after: dict, head: bool) -> set[str]:
    keys = [k for k in before if k.startswith("fc.") == head and "num_batches" not in k]
    return {k for k in keys if not torch.equal(before[k], after[k])}


def test_frozen_backbone_does_not_change_until_unfrozen_at_lr_times_factor(tmp_path) -> None:
    callback = HeadFirstFinetuning(unfreeze_at_epoch=1, backbone_lr_factor=0.1)
    shots = tiny_fit(tmp_path, epochs=2, callbacks=[callback])
    initial, frozen, unfrozen = shots.states
    # epoch 0: only the head moved (the backbone's weights and batch-norm statistics kept)
    assert shots.lrs[0] == [0.01]
    assert changed(initial, frozen, head=False) == set()
    assert changed(initial, frozen, head=True) == {"fc.weight", "fc.bias"}
    # epoch 1: the backbone trains too, as a second group at lr / 10
    assert shots.lrs[1] == pytest.approx([0.01, 0.001])
    moved = changed(frozen, unfrozen, head=False)
    assert {"conv1.weight", "layer4.1.bn2.weight", "layer4.1.bn2.running_mean"} <= moved


def test_model_freeze_backbone_trains_only_the_head_for_the_whole_run(tmp_path) -> None:
    shots = tiny_fit(tmp_path, epochs=2, freeze="backbone")
    initial, _, last = shots.states
    assert changed(initial, last, head=False) == set()
    assert changed(initial, last, head=True) == {"fc.weight", "fc.bias"}
    with pytest.raises(UserError, match="callbacks.finetuning would unfreeze it"):
        tiny_fit(tmp_path, epochs=1, callbacks=[HeadFirstFinetuning()], freeze="backbone")
    with pytest.raises(UserError, match="model.freeze='head' is not supported"):
        ImageClassifier(lambda **shape: nn.Linear(2, 2), torch.optim.SGD, 2, 1, 2, freeze="head")


# ------------------------------------------------------------------ end to end
def test_finetuning_run_from_local_weights_trains_evaluates_and_predicts(tmp_path) -> None:
    from imgcls.eval import evaluate
    from imgcls.predict import predict
    from imgcls.train import train

    root = write_flat_folder(tmp_path / "pics", n=8)
    weights = tmp_path / "r18.pth"
    saved_resnet18(weights)
    overrides = [
        "experiment=folder_finetune",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=8",
        f"model.net.weights={weights}",
        "trainer.max_epochs=2",
        "callbacks.finetuning.unfreeze_at_epoch=1",
        "logger=csv",
        "~callbacks.plots",
    ]
    cfg = compose_config("train", overrides, tmp_path / "train")
    assert list(cfg.data.mean) == pytest.approx([0.485, 0.456, 0.406])  # set by the experiment
    metrics = train(cfg)
    (best,) = (tmp_path / "train" / "checkpoints").glob("epoch_*.ckpt")

    weights.unlink()  # the checkpoint holds every weight: eval and predict never read the file
    eval_cfg = compose_config("eval", [f"ckpt_path={best}", "logger=csv"], tmp_path / "eval")
    assert evaluate(eval_cfg)["test/acc"] == pytest.approx(metrics["test/acc"])

    out = tmp_path / "predictions.csv"
    predict_cfg = compose_config(
        "predict", [f"ckpt_path={best}", f"input={root / 'banana'}", f"output={out}"], tmp_path
    )
    predict(predict_cfg)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and {r["predicted_class"] for r in rows} <= {"apple", "banana", "cherry"}


def test_a_run_resumed_after_the_unfreezing_ends_like_an_uninterrupted_one(tmp_path) -> None:
    from imgcls.train import train

    base = [
        "data=digits",
        "model=torchvision",
        "model/scheduler=step",
        "model.scheduler.step_size=1",
        "callbacks=finetuning",
        "callbacks.finetuning.unfreeze_at_epoch=1",
        "logger=csv",
        "~callbacks.plots",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "test=false",
    ]
    train(compose_config("train", [*base, "trainer.max_epochs=3"], tmp_path / "whole"))
    train(compose_config("train", [*base, "trainer.max_epochs=2"], tmp_path / "cut"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"  # two parameter groups by now
    train(
        compose_config(
            "train", [*base, "trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path / "cut"
        )
    )
    whole, resumed = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
        for run in ("whole", "cut")
    )
    assert resumed["epoch"] == whole["epoch"] == 2
    assert all(torch.equal(v, resumed["state_dict"][k]) for k, v in whole["state_dict"].items())
    lrs = [[g["lr"] for g in c["optimizer_states"][0]["param_groups"]] for c in (whole, resumed)]
    assert lrs[0] == lrs[1] and len(lrs[0]) == 2
