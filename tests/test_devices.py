"""``trainer.gpus`` as users type it, mapped onto Lightning 2's accelerator/devices."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from imgcls.utils.devices import apply_gpus
from imgcls.utils.errors import UserError


def trainer_cfg(**kwargs):
    return OmegaConf.create({"accelerator": "auto", "devices": 1, **kwargs})


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


@pytest.mark.parametrize(
    ("gpus", "accelerator", "devices"),
    [(0, "cpu", 1), (1, "gpu", 1), (2, "gpu", 2), (-1, "gpu", -1)],
)
def test_gpus_maps_to_accelerator_and_devices(monkeypatch, gpus, accelerator, devices) -> None:
    fake_gpus(monkeypatch, 2)
    cfg = trainer_cfg()
    apply_gpus(cfg, gpus)
    assert (cfg.accelerator, cfg.devices) == (accelerator, devices)


def test_no_gpus_key_leaves_config_alone(monkeypatch) -> None:
    fake_gpus(monkeypatch, 0)
    cfg = trainer_cfg()
    apply_gpus(cfg, None)
    assert (cfg.accelerator, cfg.devices) == ("auto", 1)


def test_gpu_requested_without_gpu_is_one_clear_line(monkeypatch) -> None:
    fake_gpus(monkeypatch, 0)
    with pytest.raises(UserError, match=r"trainer.gpus=1 asks for a GPU but none is available"):
        apply_gpus(trainer_cfg(), 1)
    with pytest.raises(UserError, match="no GPU is available"):
        apply_gpus(trainer_cfg(accelerator="gpu"), None)


def test_explicit_conflicting_devices_is_rejected(monkeypatch) -> None:
    fake_gpus(monkeypatch, 4)
    with pytest.raises(UserError, match="conflicts with trainer.devices=4"):
        apply_gpus(trainer_cfg(devices=4), 2, devices_given=True)
    cfg = trainer_cfg(devices=2)
    apply_gpus(cfg, 2, devices_given=True)  # agreeing values are fine
    assert cfg.devices == 2


def test_more_gpus_than_present_and_bad_values(monkeypatch) -> None:
    fake_gpus(monkeypatch, 1)
    with pytest.raises(UserError, match="has 1 GPU"):
        apply_gpus(trainer_cfg(), 3)
    with pytest.raises(UserError, match="integer >= -1"):
        apply_gpus(trainer_cfg(), -5)
