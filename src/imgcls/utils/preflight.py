"""Checks that run before Hydra does any work: config choices and a writable run dir."""

from __future__ import annotations

import difflib
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

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


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose(config_name, overrides=overrides)


def _is_group(config_dir: Path, key: str) -> bool:
    return (config_dir / key.replace(".", "/")).is_dir()


def _suggestion(cfg: DictConfig, key: str) -> str:
    """`` did you mean trainer.max_epochs?`` for ``trainer.max_epoch``, from the keys beside it."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(name, [str(k) for k in node], n=1, cutoff=0.6)
    return f" did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""


def _default(cfg: DictConfig, key: str) -> Any:
    """The composed value at ``key``, None for an interpolation (resolving may import torch)."""
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or name not in parent:
        return None
    if OmegaConf.is_interpolation(parent, name) or OmegaConf.is_missing(parent, name):
        return None
    return parent[name]


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys left at ``???``, found without resolving interpolations (``OmegaConf.missing_keys``
    resolves them, and ``${hydra:...}`` fails outside a run)."""
    found = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            found.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            found += missing_keys(cfg[key], f"{prefix}{key}.")
    return found


def _type_mistake(key: str, value: Any, default: Any) -> str | None:
    """A message when a number or bool default gets a word (``data.batch_size=abc``)."""
    if not isinstance(value, str) or value.startswith("${") or default is None:
        return None
    if isinstance(default, bool):
        expected = "true or false"
    elif isinstance(default, int):
        expected = "an integer"
    elif isinstance(default, float):
        expected = "a number"
    else:
        return None
    return f"{key}={value} is not {expected}; give {expected}, e.g. {key}={default}"


def config_mistake(argv: list[str], config_dir: Path, config_name: str) -> str | None:
    """One line for the first override that cannot be right, checked before Hydra starts.

    A typo in a key (with the closest existing key), a word where the config holds a number,
    and a required value (``???``) left out. Sweeps (``a=1,2``) and ``hydra.*`` keys are left to
    Hydra; ``--help``, ``--cfg`` and friends are not checked beyond the choices.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import ConfigCompositionException, HydraException

    message = unknown_choice(argv, config_dir)
    if message:
        return message
    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.shell_completion or args.info:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return None  # a syntax error: Hydra's own message says where
    plain = [
        o for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")
    ]
    choices = [o for o in plain if _is_group(config_dir, o.key_or_group) or o.is_delete()]
    name = args.config_name or config_name
    try:
        cfg = _compose(config_dir, name, [o.input_line for o in plain])
    except ConfigCompositionException as err:
        cause = err.__cause__
        key = getattr(cause, "full_key", None)
        if key and "not in struct" in str(cause):
            base = _compose(config_dir, name, [o.input_line for o in choices])
            given = next((o for o in plain if o.key_or_group == key), None)
            value = given.input_line.split("=", 1)[1] if given else "..."
            hint = _suggestion(base, key)
            hint = f";{hint}" if hint else ""
            return f"unknown config key {key}{hint} (to add a new key: +{key}={value})"
        return " ".join(str(err).split())
    values = [o for o in plain if o not in choices and o.type == OverrideType.CHANGE]
    if values:
        base = _compose(config_dir, name, [o.input_line for o in choices])
        for override in values:
            mistake = _type_mistake(
                override.key_or_group, override.value(), _default(base, override.key_or_group)
            )
            if mistake:
                return mistake
    if args.cfg is None:
        swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
        for key in missing_keys(cfg):
            if key not in swept:
                return f"{key} is required: add {key}=... to the command"
    return None


def exit_on_config_mistake(argv: list[str], config_dir: Path, config_name: str) -> None:
    message = config_mistake(argv, config_dir, config_name)
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
