"""The commands ``train.py``, ``eval.py``, ``predict.py``, ``export.py``: Hydra apps."""

import importlib
import os
from functools import partial
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from imgcls.config import CONFIG_DIR


def config_summary(cfg: DictConfig) -> str:
    """The config groups chosen, the overrides and where the full resolved config is written."""
    hydra_cfg = HydraConfig.get()
    chosen = [  # not hydra's groups, nor an absent optional one (no file)
        f"{g}={c}"
        for g, c in sorted(hydra_cfg.runtime.choices.items())
        if c and not g.startswith("hydra") and (CONFIG_DIR / g / f"{c}.yaml").is_file()
    ]
    lines = ["config: " + " ".join(chosen)]
    for key in ("resume", "rerun"):  # the run's saved config replaces what was composed here
        if isinstance(OmegaConf.select(cfg, key), str):
            lines = [f"config: the saved config of {cfg[key]} ({key}=)"]
    lines.append("overrides: " + (" ".join(hydra_cfg.overrides.task) or "none"))
    full = f"written to {cfg.paths.output_dir}/config.yaml when training starts; " * (
        cfg.task_name == "train"
    )
    return "\n".join([*lines, f"full config: {full}extras.print_config=full prints it now"])


def launch(config_name: str, module: str) -> None:
    """Run ``<module>.run(cfg)`` as a Hydra app, after the ``extras.print_config`` print."""

    def task(cfg: DictConfig) -> Any:
        mode = OmegaConf.select(cfg, "extras.print_config")
        if mode and os.environ.get("LOCAL_RANK", "0") == os.environ.get("NODE_RANK", "0") == "0":
            text = OmegaConf.to_yaml(cfg, resolve=True) if mode == "full" else config_summary(cfg)
            print(text, flush=True)  # within a second: before torch and Lightning load
        return importlib.import_module(module).run(cfg)

    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)()


train = partial(launch, "train", "imgcls.train")  # python train.py [resume=<run dir>]
evaluate = partial(launch, "eval", "imgcls.eval")  # python eval.py ckpt_path=PATH
predict = partial(launch, "predict", "imgcls.predict")  # ... ckpt_path=PATH input=IMAGE_OR_DIR
export = partial(launch, "export", "imgcls.export")  # python export.py ckpt_path=PATH format=onnx
