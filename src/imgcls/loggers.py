"""W&B glue for Lightning's ``WandbLogger``: offline without an API key, the run finished after a
task (``logger=mlflow`` and the rest are Lightning's loggers, instantiated by Hydra)."""

from __future__ import annotations

import netrc
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse


def wandb_api_key_configured() -> bool:
    """Whether W&B can authenticate: ``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(offline: bool | None = None, **kwargs: Any) -> Any:
    """``WandbLogger``; ``offline=None``: offline unless an API key is configured or ``WANDB_MODE``
    (W&B's own switch) is set."""
    from pytorch_lightning.loggers import WandbLogger

    if offline is None:
        offline = not os.environ.get("WANDB_MODE") and not wandb_api_key_configured()
    return WandbLogger(offline=offline, **kwargs)


def finish_loggers(loggers: Iterable[Any]) -> None:
    """End the W&B run of a finished task (Lightning leaves it open; the next run of a sweep in the
    same process would log into it)."""
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
