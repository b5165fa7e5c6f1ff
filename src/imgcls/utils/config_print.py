"""The config a run starts with, printed before torch loads (``extras.print_config``).

``true``: the config groups chosen, the overrides and where the full resolved config is written,
as plain unwrapped lines (paths stay whole when the output is piped or logged); ``full``: the
whole composed config as a tree; ``false``: nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from imgcls.config import CONFIG_DIR
from imgcls.run_dir import CONFIG_FILE

PRINT_ORDER = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")


def config_summary(cfg: DictConfig) -> list[str]:
    """A run's config in a few lines: the groups chosen, the overrides, where the rest is."""
    lines = []
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        chosen = {  # an optional group whose config does not exist (quickstart) chose nothing
            group: choice
            for group, choice in hydra_cfg.runtime.choices.items()
            if not group.startswith("hydra")
            and choice is not None
            and (CONFIG_DIR / group / f"{choice}.yaml").is_file()
        }
        lines.append("config: " + " ".join(f"{g}={c}" for g, c in sorted(chosen.items())))
        lines.append("overrides: " + (" ".join(hydra_cfg.overrides.task) or "none"))
    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    if output_dir:
        full = Path(output_dir) / CONFIG_FILE
        lines.append(f"full config: {full} (extras.print_config=full prints it)")
    return lines


def print_config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER) -> None:
    """Print the composed config as a rich tree (top-level groups first)."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        tree.add(str(key), style="dim").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def print_config(cfg: DictConfig) -> None:
    """What ``extras.print_config`` asks for, once per run (not in the extra DDP processes)."""
    mode = OmegaConf.select(cfg, "extras.print_config", default=False)
    if (
        not mode
        or os.environ.get("LOCAL_RANK", "0") != "0"
        or os.environ.get("NODE_RANK", "0") != "0"
    ):
        return
    if mode == "full":
        print_config_tree(cfg)
    else:
        print("\n".join(config_summary(cfg)), flush=True)
