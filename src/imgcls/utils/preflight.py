"""Checks that run before Hydra does any work: config choices and a writable run dir."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from imgcls.run_dir import parse_overrides


def plugin_options(group: str) -> set[str]:
    """Options that Hydra plugins register in code, e.g. ``hydra/launcher=joblib``."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # importing the plugins registers their configs
    try:
        names = ConfigStore.instance().list(group)
    except OSError:
        return set()
    return {n.removesuffix(".yaml") for n in names if n.endswith(".yaml")}


def unknown_choice(args: list[str], config_dir: Path) -> str | None:
    """A one-line message for the first ``group=option`` whose option file does not exist."""
    for override in parse_overrides(args):
        if override.deletes:
            continue
        key, value = override.key, override.value
        group = config_dir / key.replace(".", "/")
        if not group.is_dir() or "," in value or value in ("null", "none") or "(" in value:
            continue  # a plain value, a sweep or a sweep function: Hydra checks those
        if (group / f"{value}.yaml").is_file():
            continue
        options = {p.stem for p in group.glob("*.yaml")} | plugin_options(key.replace(".", "/"))
        if value not in options:
            return f"unknown {key}={value}; available {key} options: {', '.join(sorted(options))}"
    return None


def exit_on_unknown_choice(args: list[str], config_dir: Path) -> None:
    message = unknown_choice(args, config_dir)
    if message:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def ensure_writable(directory: str | Path) -> None:
    """Create ``directory`` and write a probe file into it; exit with one line if that fails."""
    path = Path(str(directory))
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"ok")
    except OSError as err:
        print(
            f"error: cannot write the run dir {path} ({err.strerror or err}); "
            "free disk space or point paths.log_dir at a writable directory",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


class RunDirCheck(Callback):
    """Hydra callback: fail with one clear line before any work when the run dir is unusable."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        ensure_writable(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        ensure_writable(config.hydra.sweep.dir)
