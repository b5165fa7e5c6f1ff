"""Where the Hydra configs live, and the resolvers ``${run_id:}``, ``${datamodule:...}`` and
``${pretrained:...}`` (the pretrained weights' preprocessing, see imgcls.models.nets.pretrained)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = Path(os.environ.get("IMGCLS_CONFIG_DIR", REPO_ROOT / "configs"))

_datamodules: dict[str, Any] = {}


def datamodule_attribute(name: str, *, _root_: DictConfig) -> Any:
    """``${datamodule:num_classes}``: read a shape fact from the configured datamodule.

    The datamodule is the single source of truth for ``num_classes``, ``in_channels`` and
    ``image_size``, so every net config fits every dataset. Instances are cached per data config.
    """
    from hydra.utils import instantiate

    data_cfg = _root_.get("data")
    if data_cfg is None:
        raise ValueError(f"${{datamodule:{name}}} needs a `data` config to read {name} from")
    key = OmegaConf.to_yaml(data_cfg, resolve=True)
    if key not in _datamodules:
        _datamodules[key] = instantiate(data_cfg)
    return getattr(_datamodules[key], name)


def setup_config_environment() -> None:
    """Register imgcls's resolvers and default ``IMGCLS_ROOT`` (idempotent)."""
    os.environ.setdefault("IMGCLS_ROOT", str(REPO_ROOT))
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("datamodule"):
        OmegaConf.register_new_resolver("datamodule", datamodule_attribute)
    if not OmegaConf.has_resolver("pretrained"):
        from imgcls.models.nets.pretrained import pretrained_resolver

        OmegaConf.register_new_resolver("pretrained", pretrained_resolver)
