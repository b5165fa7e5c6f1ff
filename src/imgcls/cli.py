"""The commands ``train.py``, ``eval.py``, ``predict.py``, ``export.py`` (``imgcls-train`` ...).

Hydra parses the command line, composes the config and names the job (``hydra.job.name`` is the
config's ``task_name``). Nothing heavy is imported before the task runs: ``--help``, ``--cfg job``,
config mistakes (Hydra's messages) and bad values (``imgcls.utils.checks``, a Hydra callback)
answer before torch and Lightning load; the task module is imported when the task starts.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

from omegaconf import DictConfig

from imgcls.config import CONFIG_DIR


def launch(config_name: str, module: str) -> None:
    """Run ``<module>.run(cfg)`` as the Hydra app of ``configs/<config_name>.yaml``."""
    import hydra

    def task(cfg: DictConfig) -> Any:
        from imgcls.utils.config_print import print_config

        print_config(cfg)  # within a second of the start: before torch and Lightning load
        return importlib.import_module(module).run(cfg)

    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)()


train = partial(launch, "train", "imgcls.train")  # python train.py [resume=<run dir>]
evaluate = partial(launch, "eval", "imgcls.eval")  # python eval.py ckpt_path=PATH
predict = partial(launch, "predict", "imgcls.predict")  # ... ckpt_path=PATH input=IMAGE_OR_DIR
export = partial(launch, "export", "imgcls.export")  # python export.py ckpt_path=PATH format=onnx
