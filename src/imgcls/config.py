"""Where the Hydra configs live, the resolvers ``${run_id:}``, ``${datamodule:...}``,
``${pretrained:...}`` (the pretrained weights' preprocessing, see imgcls.models.nets.pretrained)
and the SLURM sizes of ``hydra/launcher=slurm`` (imgcls.utils.cluster), and ``compose`` (a config
as a command would run it, e.g. in a notebook)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

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
        OmegaConf.register_new_resolver("pretrained", pretrained_attribute)
    from imgcls.utils.cluster import RESOLVERS  # the launcher=slurm sizes, read from the trainer

    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def pretrained_attribute(key: str, *, _root_: DictConfig) -> Any:
    """``${pretrained:...}``, importing the nets (and torch) only when a config resolves it."""
    from imgcls.models.nets.pretrained import pretrained_resolver

    return pretrained_resolver(key, _root_=_root_)


def compose(
    overrides: Sequence[str] = (), config_name: str = "train", output_dir: str | Path | None = None
) -> DictConfig:
    """The config ``python <config_name>.py <overrides>`` would run, composed outside a run.

    ``paths.output_dir`` is a new run dir as Hydra would name it (or ``output_dir``); nothing is
    created until a run writes there. ``imgcls.train.train(cfg)`` trains with it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from imgcls.utils.errors import UserError
    from imgcls.utils.preflight import config_mistake

    setup_config_environment()
    mistake = config_mistake(list(overrides), CONFIG_DIR, config_name)
    if mistake:
        raise UserError(mistake)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    run_dir = output_dir or OmegaConf.select(cfg, "hydra.run.dir")
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(run_dir)
    return cfg
