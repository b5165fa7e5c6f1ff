"""Speed options: bf16, channels_last, compile checkpoints, the lean trainer, the fast data path."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint, ModelSummary

from imgcls.config import CONFIG_DIR
from imgcls.data.digits import DigitsDataModule
from imgcls.data.loaders import TensorBatchLoader
from imgcls.lifecycle import RunInfo
from imgcls.models.classifier import ImageClassifier
from imgcls.train import build_trainer, train
from imgcls.utils.errors import UserError
from imgcls.utils.runs import instantiate_list


@pytest.mark.parametrize(
    "option", ["trainer.precision=bf16-mixed", "model.channels_last=true"], ids=["bf16", "cl"]
)
def test_speed_option_trains_on_cpu(make_cfg, option) -> None:
    cfg = make_cfg("train", ["data=digits", "trainer.fast_dev_run=true", option])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_fast_trainer_leaves_out_progress_bar_and_summary_but_keeps_checkpoints(tmp_path):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fast", "data=digits"])
    assert cfg.trainer.enable_progress_bar is False
    assert cfg.trainer.enable_model_summary is False
    assert {"rich_progress_bar", "rich_model_summary", "plots"} <= set(cfg.callbacks)  # untouched
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(tmp_path)
    callbacks = instantiate_list(cfg.callbacks)
    trainer = build_trainer(cfg, callbacks=callbacks, logger=False)  # no progress-bar conflict
    assert trainer.progress_bar_callback is None
    assert not [c for c in trainer.callbacks if isinstance(c, ModelSummary)]
    assert len(trainer.checkpoint_callbacks) == 2  # the best and last.ckpt


@pytest.mark.parametrize(
    "experiment", ["mnist_speedrun", "mnist_tinynet_fast", "mnist_speedrun_gpu"]
)
def test_speed_experiments_run(make_cfg, fake_mnist, experiment) -> None:
    cfg = make_cfg(
        "train",
        [
            f"experiment={experiment}",
            f"data.data_dir={fake_mnist}",
            "data.val_size=100",
            "trainer.fast_dev_run=true",
            "data.batch_size=4",  # one batch each: any size does
            "data.eval_batch_size=4",
        ],
    )
    assert torch.isfinite(torch.tensor(train(cfg)["train/loss"]))


def test_compiled_model_checkpoint_round_trip(make_cfg, monkeypatch) -> None:
    """``model.compile=true``: checkpoints keep plain ``net.`` names and reload to the same net.

    The eager backend stands in for inductor (the same compiled wrapper, no code generation: ~2 s
    instead of ~40 s); torch.compile's own modes are covered by tests/test_gpu.py.
    """
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: real_compile(net, backend="eager"))
    cfg = make_cfg(
        "train",
        [
            "data=digits",
            "model.compile=true",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=0",
        ],
    )
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    checkpointing = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    run_info = RunInfo(OmegaConf.to_container(cfg, resolve=True))
    trainer = build_trainer(cfg, callbacks=[checkpointing, run_info], logger=False)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 3

    ckpt = ckpt_dir / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    assert set(state) == set(model.state_dict())

    loaded = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    model.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model.net(x)
        assert torch.equal(loaded.net(x), expected)
    assert model.compiled_net._orig_mod is model.net  # the compiled forward ran these weights


# ------------------------------------------------------------------ fast path == standard path
def _datamodule(in_memory: bool, augment: str = "none"):  # noqa: ANN202
    datamodule = DigitsDataModule(batch_size=32, augment=augment, in_memory=in_memory, seed=7)
    datamodule.setup("fit")
    return datamodule


def _fast_batches(datamodule, training: bool):  # noqa: ANN001, ANN202
    """The in-memory path as the Trainer runs it: uint8 batches, then on_after_batch_transfer."""
    loader = datamodule.val_dataloader()
    assert isinstance(loader, TensorBatchLoader)
    datamodule.trainer = SimpleNamespace(training=training)
    try:
        return [datamodule.on_after_batch_transfer(batch, 0) for batch in loader]
    finally:
        datamodule.trainer = None


def test_in_memory_and_standard_paths_give_the_same_normalised_val_batches() -> None:
    fast = _fast_batches(_datamodule(in_memory=True), training=False)
    standard_dm = _datamodule(in_memory=False)
    standard = list(standard_dm.val_dataloader())
    assert standard and len(fast) == len(standard)
    for (x_fast, y_fast), (x_std, y_std) in zip(fast, standard, strict=True):
        assert x_fast.dtype == x_std.dtype == torch.float32
        assert torch.equal(y_fast, y_std)  # same samples, same order
        torch.testing.assert_close(x_fast, x_std, rtol=0, atol=1e-6)
    images, _ = standard_dm.splits["val"]
    assert sum(len(y) for _, y in fast) == len(images)


def test_augmentation_applies_only_while_training() -> None:
    plain = _fast_batches(_datamodule(in_memory=True), training=False)[0][0]
    augmenting = _datamodule(in_memory=True, augment="digits")
    torch.manual_seed(0)
    evaluated = _fast_batches(augmenting, training=False)[0][0]
    trained = _fast_batches(augmenting, training=True)[0][0]
    torch.testing.assert_close(evaluated, plain, rtol=0, atol=0)
    assert not torch.allclose(trained, plain, atol=1e-3)

    standard = _datamodule(in_memory=False, augment="digits")
    train_set = standard.train_dataloader().dataset
    val_set = standard.val_dataloader().dataset
    assert train_set.train and not val_set.train
    raw, _ = standard.splits["val"]
    expected = standard.pipeline(raw[:1], train=False)[0]
    torch.testing.assert_close(val_set[0][0], expected, rtol=0, atol=0)
    train_raw, _ = standard.splits["train"]
    unaugmented = standard.pipeline(train_raw[:1], train=False)[0]
    assert not torch.allclose(train_set[0][0], unaugmented, atol=1e-3)


GiB = 2**30


@pytest.mark.parametrize(
    ("on_device", "device", "free", "expected"),
    [
        (None, "cuda", 100 * GiB, True),  # auto: the splits fit in a quarter of free memory
        (None, "cuda", 1000, False),  # auto: too big for this GPU, stay in host memory
        (None, "cpu", None, False),  # already where training runs
        (True, "cpu", None, False),
        (False, "cuda", 100 * GiB, False),
        (True, "cuda", 100 * GiB, True),
    ],
)
def test_on_device_decision(monkeypatch, on_device, device, free, expected) -> None:  # noqa: ANN001
    monkeypatch.setattr("imgcls.data.base.device_free_memory", lambda _device: free)
    datamodule = DigitsDataModule(on_device=on_device)
    datamodule.setup("fit")
    assert datamodule._use_device_copies(torch.device(device)) is expected


def test_on_device_without_room_is_a_one_line_error(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("imgcls.data.base.device_free_memory", lambda _device: 1000)
    datamodule = DigitsDataModule(on_device=True)
    datamodule.setup("fit")
    with pytest.raises(UserError, match=r"data.on_device=true needs .* set data.on_device=false"):
        datamodule._use_device_copies(torch.device("cuda"))


def test_on_device_copies_each_split_once_and_cuts_batches_there(monkeypatch) -> None:  # noqa: ANN001
    """The whole path but CUDA itself: "meta" stands in for the GPU (no data, real placement)."""
    monkeypatch.setattr("imgcls.data.base.device_free_memory", lambda _device: 100 * GiB)
    datamodule = DigitsDataModule(batch_size=32, on_device=True)
    datamodule.setup("fit")
    meta = torch.device("meta")
    monkeypatch.setattr(datamodule, "_training_device", lambda: meta)
    loader = datamodule.train_dataloader()
    assert loader.images.device == meta and loader.labels.device == meta
    assert datamodule.train_dataloader().images is loader.images  # copied once, then reused
    monkeypatch.setattr("imgcls.data.base.device_free_memory", lambda _device: 0)
    assert datamodule.val_dataloader().images.device == meta  # one decision for every split
    batches = list(loader)
    assert len(batches) == len(loader) > 1
    assert all(x.device == meta and y.device == meta and x.shape[0] == 32 for x, y in batches[:-1])
    assert not loader.pin_memory
    assert datamodule.splits["train"][0].device.type == "cpu"  # the host copy stays
    datamodule.teardown("fit")
    assert not datamodule._device_splits


# ------------------------------------------------------------------ no host sync per step
#: Tensor methods that copy a value to the host (a device-to-host sync on a GPU)
HOST_READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


def _count_host_reads(monkeypatch, run) -> int:  # noqa: ANN001
    """Host reads of tensor values made while ``run()`` runs.

    torch.optim's own reads of its step counters are left out: a non-fused optimizer keeps them
    on the host by design (no sync on a GPU); fused optimizers keep them on the device.
    """
    count = 0

    def counting(original):  # noqa: ANN001, ANN202
        def method(self, *args, **kwargs):  # noqa: ANN001, ANN202
            nonlocal count
            caller = sys._getframe(1).f_code.co_filename
            if f"torch{os.sep}optim{os.sep}" not in caller:
                count += 1
            return original(self, *args, **kwargs)

        return method

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
        run()
    return count


@pytest.mark.parametrize("trainer", ["default", "fast"])
def test_training_steps_make_no_host_sync(make_cfg, monkeypatch, trainer) -> None:
    """Host reads during a fit do not grow with the number of steps: none happens per step.

    The default trainer runs with all its default callbacks (rich progress bar and model
    summary, plots, learning-rate monitor, both checkpoints) and TensorBoard; reads every
    ``log_every_n_steps`` and at epoch ends are allowed (50 keeps the former out).
    """

    def fit(steps: int) -> Callable[[], None]:
        cfg = make_cfg(
            "train",
            [
                "data=digits",
                f"trainer={trainer}",
                f"trainer.limit_train_batches={steps}",
                "trainer.limit_val_batches=2",
                "trainer.max_epochs=1",
                "trainer.log_every_n_steps=50",
                "test=false",
            ],
            subdir=f"steps{steps}",
        )
        if trainer == "default":  # undo make_cfg's quiet settings: the real default callbacks
            with open_dict(cfg):
                cfg.trainer.enable_progress_bar = cfg.trainer.enable_model_summary = True
                for name in ("rich_progress_bar", "rich_model_summary"):
                    cfg.callbacks[name] = OmegaConf.load(CONFIG_DIR / f"callbacks/{name}.yaml")[
                        name
                    ]
        return lambda: train(cfg)

    few = _count_host_reads(monkeypatch, fit(3))
    many = _count_host_reads(monkeypatch, fit(9))
    assert few > 0  # the counter sees the epoch-end reads
    assert many == few, f"{many - few} host reads over 6 more steps"


# ------------------------------------------------------------------ compile modes, CUDA graphs
@pytest.mark.parametrize(
    ("value", "mode"),
    [(True, "default"), ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune")],
)
def test_compile_option_reaches_torch_compile(monkeypatch, value, mode) -> None:
    seen = {}

    def fake_compile(net, mode=None, **kwargs):  # noqa: ANN001, ANN202
        seen["mode"] = mode
        return net

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = _classifier(compile=value)
    assert seen == {"mode": mode}
    assert model.uses_cuda_graphs == (mode != "default")


def test_unknown_compile_mode_is_one_clear_line() -> None:
    with pytest.raises(
        UserError, match=r"model.compile must be false, true or one of .*got 'fast'"
    ):
        _classifier(compile="fast")


def _classifier(**kwargs) -> ImageClassifier:  # noqa: ANN003
    from functools import partial

    from imgcls.models.nets.mlp import MLP

    return ImageClassifier(
        net=partial(MLP, hidden_sizes=[8]),
        optimizer=partial(torch.optim.Adam, lr=0.01),
        num_classes=10,
        in_channels=1,
        image_size=8,
        **kwargs,
    )


@pytest.mark.slow
def test_cuda_graph_mode_keeps_one_batch_shape_and_never_recompiles(make_cfg, monkeypatch) -> None:
    """With a CUDA-graph compile mode, training batches keep one shape (the last partial batch is
    dropped) and a OneCycle learning rate changing every step causes no recompilation.

    On a CPU torch.compile does not capture graphs; the eager backend stands in for inductor
    (same Dynamo guards and recompiles, no code generation).
    """
    import torch._dynamo

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: real_compile(net, backend="eager"))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    cfg = make_cfg(
        "train",
        [
            "data=digits",
            "data.batch_size=100",  # 1221 training images: 12 full batches and 21 left over
            "model/scheduler=onecycle",
            "model.compile=reduce-overhead",
            "trainer=fast",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=0",
            "test=false",
        ],
    )
    try:
        datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
        trainer = build_trainer(cfg, logger=False, enable_checkpointing=False, callbacks=[])
        trainer.fit(model, datamodule=datamodule)
    finally:
        torch._dynamo.reset()
    assert trainer.global_step == 1221 // 100


def test_drop_last_follows_the_compile_mode_unless_set() -> None:
    graphs = SimpleNamespace(lightning_module=SimpleNamespace(uses_cuda_graphs=True))
    plain = SimpleNamespace(lightning_module=SimpleNamespace(uses_cuda_graphs=False))
    for drop_last, trainer, batches in [
        (None, graphs, 1221 // 100),
        (None, plain, -(-1221 // 100)),
        (True, plain, 1221 // 100),
        (False, graphs, -(-1221 // 100)),
    ]:
        datamodule = DigitsDataModule(batch_size=100, drop_last=drop_last)
        datamodule.setup("fit")
        datamodule.trainer = SimpleNamespace(
            **vars(trainer),
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
            global_rank=0,
            overfit_batches=0,
            world_size=1,
            current_epoch=0,
        )
        assert len(datamodule.train_dataloader()) == batches, (drop_last, trainer)
        assert len(datamodule.val_dataloader()) == -(-len(datamodule.splits["val"][1]) // 100)


# ------------------------------------------------------------------ fused optimizers, TF32
def test_fused_optimizer_on_cuda_by_default_and_never_twice() -> None:
    from functools import partial

    from imgcls.models.classifier import fused_kwargs

    adam = partial(torch.optim.Adam, lr=0.01)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fused_kwargs(adam, None, cuda) == {"fused": True}
    assert fused_kwargs(adam, None, cpu) == {}
    assert fused_kwargs(adam, False, cuda) == {}
    assert fused_kwargs(adam, True, cpu) == {"fused": True}
    assert fused_kwargs(partial(torch.optim.Adam, foreach=True), None, cuda) == {}  # config wins
    assert fused_kwargs(partial(torch.optim.Rprop), None, cuda) == {}  # has none
    with pytest.raises(UserError, match="Rprop has no fused implementation"):
        fused_kwargs(partial(torch.optim.Rprop), True, cpu)
    model = _classifier(fused_optimizer=True)  # fused Adam exists on the CPU too
    assert model.configure_optimizers().defaults["fused"] is True


def test_float32_matmul_precision_is_high_on_a_gpu_and_configurable(make_cfg, monkeypatch) -> None:
    from imgcls.utils.devices import apply_matmul_precision

    chosen = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", chosen.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    apply_matmul_precision("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    apply_matmul_precision("auto")  # the CPU keeps its default
    apply_matmul_precision("medium")
    assert chosen == ["high", "medium"]
    with pytest.raises(UserError, match="float32_matmul_precision must be auto, highest, high"):
        apply_matmul_precision("tf32")

    cfg = make_cfg("train", ["data=digits", "float32_matmul_precision=highest"])
    assert "float32_matmul_precision" not in cfg.trainer  # not a Trainer argument
    build_trainer(cfg, logger=False)
    assert chosen[-1] == "highest"
