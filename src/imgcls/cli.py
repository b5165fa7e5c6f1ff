"""The commands ``train.py``, ``eval.py``, ``predict.py``, ``export.py`` (``imgcls-train`` ...).

Nothing heavy is imported here: ``--help``, ``--cfg`` and config mistakes answer before torch,
Lightning and torchvision load. The config is composed and checked up front
(``imgcls.utils.preflight``); the task module is imported only when Hydra runs the task.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from imgcls.config import CONFIG_DIR, setup_config_environment


def lazy_task(module: str) -> Callable[[DictConfig], Any]:
    """Hydra's task: ``<module>.run(cfg)``, the module imported when the task starts."""

    def task(cfg: DictConfig) -> Any:
        from imgcls.utils.config_print import print_config

        print_config(cfg)  # within a second of the start: before torch and Lightning load
        return importlib.import_module(module).run(cfg)

    task.__module__ = module  # Hydra names the job after the task's module (``train``)
    return task


def launch(config_name: str, module: str, argv: list[str]) -> None:
    import hydra

    from imgcls.utils.preflight import exit_on_config_mistake

    setup_config_environment()
    exit_on_config_mistake(argv, CONFIG_DIR, config_name)
    sys.argv[1:] = argv
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(
        lazy_task(module)
    )()


def train() -> None:
    """``python train.py``: fit, then test the best checkpoint (``resume=<run dir>``: continue)."""
    from imgcls.run_dir import resume_arguments
    from imgcls.utils.cluster import check_shared_run_dir
    from imgcls.utils.errors import UserError

    try:
        check_shared_run_dir(sys.argv[1:])
        args = resume_arguments(sys.argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    launch("train", "imgcls.train", args)


def evaluate() -> None:
    """``python eval.py ckpt_path=PATH``."""
    launch("eval", "imgcls.eval", sys.argv[1:])


def predict() -> None:
    """``python predict.py ckpt_path=PATH input=IMAGE_OR_FOLDER``."""
    launch("predict", "imgcls.predict", sys.argv[1:])


def export() -> None:
    """``python export.py ckpt_path=PATH format=onnx``."""
    launch("export", "imgcls.export", sys.argv[1:])
