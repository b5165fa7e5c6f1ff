"""MLflow and Weights & Biases loggers (optional extras): Lightning's loggers, plus the glue.

``logger=mlflow`` and ``logger=wandb`` instantiate these factories; they fail with one line when
the extra is not installed, and choose W&B's offline mode when no API key is configured.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from imgcls.utils.errors import UserError


def require(module: str, extra: str, option: str) -> None:
    """One clear line when an optional extra's package is missing."""
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"{option} needs the {module} package; install it with: pip install -e '.[{extra}]'"
        )


def mlflow_logger(**kwargs: Any) -> Any:
    """Lightning's ``MLFlowLogger`` (``tracking_uri``: the local store or a server)."""
    require("mlflow", "mlflow", "logger=mlflow")
    from pytorch_lightning.loggers import MLFlowLogger

    return MLFlowLogger(**kwargs)


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
    """Lightning's ``WandbLogger``; ``offline=None``: offline unless an API key is configured.

    An explicit ``WANDB_MODE`` (online, offline, disabled) is W&B's own switch and wins.
    """
    require("wandb", "wandb", "logger=wandb")
    from pytorch_lightning.loggers import WandbLogger

    if offline is None:
        offline = not os.environ.get("WANDB_MODE") and not wandb_api_key_configured()
    return WandbLogger(offline=offline, **kwargs)


def finish_loggers(loggers: Iterable[Any]) -> None:
    """End the W&B run of a finished task (Lightning leaves it open after fit and test).

    Without this the next run of a sweep in the same process would log into the same W&B run.
    """
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        import wandb

        if wandb.run is not None:  # W&B's current run (none when the logger never started one)
            wandb.finish()
