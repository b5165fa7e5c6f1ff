"""The config a run starts with, printed before torch loads (``extras.print_config``).

``true``: the config groups chosen, the overrides and where the full resolved config is written,
as plain lines (paths stay whole when piped); ``full``: the whole resolved config; ``false``:
nothing. Printed once per run, not again in the processes DDP starts.
"""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from imgcls.config import CONFIG_DIR


def config_summary(cfg: DictConfig) -> list[str]:
    """A run's config in a few lines: the groups chosen, the overrides, where the rest is."""
    lines = []
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        chosen = sorted(
            f"{group}={choice}"
            for group, choice in hydra_cfg.runtime.choices.items()
            if not group.startswith("hydra")
            and choice is not None
            and (CONFIG_DIR / group / f"{choice}.yaml").is_file()  # not an absent optional one
        )
        lines.append("config: " + " ".join(chosen))
        lines.append("overrides: " + (" ".join(hydra_cfg.overrides.task) or "none"))
    for key in ("resume", "rerun"):  # the run's saved config replaces what was composed here
        saved = OmegaConf.select(cfg, key, default=None)
        if isinstance(saved, str):
            lines[:1] = [f"config: the saved config of {saved} ({key}=)"] if lines else []
    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    if output_dir:
        lines.append(f"full config: {output_dir}/config.yaml (extras.print_config=full prints it)")
    return lines


def print_config(cfg: DictConfig) -> None:
    """What ``extras.print_config`` asks for (rank 0 only)."""
    mode = OmegaConf.select(cfg, "extras.print_config", default=False)
    if (
        not mode
        or os.environ.get("LOCAL_RANK", "0") != "0"
        or os.environ.get("NODE_RANK", "0") != "0"
    ):
        return
    text = (
        OmegaConf.to_yaml(cfg, resolve=True) if mode == "full" else "\n".join(config_summary(cfg))
    )
    print(text, flush=True)
