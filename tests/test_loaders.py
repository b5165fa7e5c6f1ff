"""What the loaders serve: fixed batches when overfitting, every sample once under DDP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from imgcls.data.digits import DigitsDataModule
from imgcls.train import train


class _Trainer:
    """The trainer attributes a datamodule's loaders read."""

    def __init__(self, overfit_batches: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.overfit_batches, self.global_rank, self.world_size = overfit_batches, rank, world_size
        self.current_epoch, self.training = 0, True
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"))


def _first_labels(dm: DigitsDataModule, trainer: _Trainer, epoch: int, batches: int = 3):
    trainer.current_epoch = epoch
    loader = iter(dm.train_dataloader())
    return torch.cat([next(loader)[1] for _ in range(batches)])


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "standard"])
def test_overfit_batches_are_the_same_every_epoch(in_memory) -> None:
    dm = DigitsDataModule(batch_size=8, in_memory=in_memory, num_workers=0)
    dm.setup("fit")
    dm.trainer = _Trainer(overfit_batches=3)
    assert torch.equal(_first_labels(dm, dm.trainer, 0), _first_labels(dm, dm.trainer, 1))
    dm.trainer = _Trainer()  # normal training reshuffles every epoch
    torch.manual_seed(0)
    assert not torch.equal(_first_labels(dm, dm.trainer, 0), _first_labels(dm, dm.trainer, 1))


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "standard"])
def test_debug_overfit_memorises_its_batches(make_cfg, in_memory) -> None:
    cfg = make_cfg(
        "train",
        [
            "data=digits",
            "debug=overfit",
            "model=mlp",
            "model.net.dropout=0",
            "trainer.max_epochs=25",
            f"data.in_memory={in_memory}",
            "data.num_workers=0",
            "logger=csv",
            "callbacks=none",
            "test=false",
        ],
    )
    metrics = train(cfg)
    assert metrics["train/acc"] == 1.0


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "standard"])
def test_distributed_evaluation_serves_every_sample_exactly_once(in_memory) -> None:
    # 325 test images over 2 ranks: a padding sampler would repeat one of them
    dm = DigitsDataModule(
        batch_size=16, in_memory=in_memory, num_workers=0, classes=[0, 1, 3, 4, 5, 6, 7, 8, 9]
    )
    dm.setup("test")
    images, _ = dm.splits["test"]
    served = []
    for rank in range(2):
        dm.trainer = _Trainer(rank=rank, world_size=2)
        dm.trainer.training = False
        loader = dm.test_dataloader()
        batches = [dm.on_after_batch_transfer(batch, 0)[0] for batch in loader]
        assert len(batches) == len(loader)
        served.append(torch.cat(batches))
    assert [len(s) for s in served] == [163, 162]
    # the same multiset of images as one process sees: none repeated, none left out
    rows, counts = torch.unique(torch.cat(served).flatten(1), dim=0, return_counts=True)
    expected_rows, expected_counts = torch.unique(
        dm.preprocess(images).flatten(1), dim=0, return_counts=True
    )
    assert torch.equal(counts, expected_counts)
    torch.testing.assert_close(rows, expected_rows)


def test_in_memory_loader_resumes_mid_epoch_from_its_state() -> None:
    dm, trainer = DigitsDataModule(batch_size=32), _Trainer()
    dm.trainer = trainer
    dm.setup()
    trainer.current_epoch = 2
    whole = [labels for _, labels in dm.train_dataloader()]
    interrupted = iter(dm.train_dataloader())
    for _ in range(5):
        next(interrupted)
    state = dm.state_dict()
    assert state == {"train_loader": {"epoch": 2, "batches": 5}}
    fresh = DigitsDataModule(batch_size=32)
    fresh.trainer = trainer
    fresh.load_state_dict(state)  # Lightning restores the datamodule before building loaders
    fresh.setup()
    rest = [labels for _, labels in fresh.train_dataloader()]
    assert len(rest) == len(whole) - 5
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[5:], strict=True))
    trainer.current_epoch = 3  # the saved position belongs to epoch 2 only
    loader = fresh.train_dataloader()
    loader.load_state_dict(state["train_loader"])
    assert len(list(loader)) == len(whole)


class _Recorder(pl.LightningModule):
    """A linear model that records the labels of every batch it trains on; OneCycle reads
    ``estimated_stepping_batches`` as imgcls's classifier does."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.seen = torch.nn.Linear(784, 10), []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[1].clone())
        return torch.nn.functional.cross_entropy(self.net(batch[0].flatten(1)), batch[1])

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        steps = self.trainer.estimated_stepping_batches
        return [optimizer], [torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=steps)]


class _SaveAt(pl.Callback):
    """Saves a checkpoint after ``step`` optimizer steps, as a mid-epoch interrupt does."""

    def __init__(self, path, step: int) -> None:
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _fit(tmp_path, ckpt_path=None) -> _Recorder:
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[_SaveAt(tmp_path / "mid.ckpt", step=7)] if ckpt_path is None else [],
    )  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
    return model


def test_lightning_resumes_mid_epoch_with_the_same_batches(tmp_path, recwarn) -> None:
    whole = _fit(tmp_path)  # 20 batches an epoch, a checkpoint after 7
    resumed = _fit(tmp_path, ckpt_path=tmp_path / "mid.ckpt")
    assert len(whole.seen) == 40 and len(resumed.seen) == 33
    assert all(torch.equal(a, b) for a, b in zip(resumed.seen, whole.seen[7:], strict=True))
    assert not [w for w in recwarn if "not resumable" in str(w.message)]
