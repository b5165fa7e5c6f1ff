"""Continue a killed run in its own run dir, with the overrides it was started with."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest state a run dir holds: its last.ckpt or a SLURM requeue's hpc_ckpt_<n>.ckpt."""
    candidates = [run_dir / LAST_CHECKPOINT, *Path(run_dir).glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime_ns, default=None)


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def _value(args: list[str], key: str) -> str | None:
    for arg in args:
        if "=" in arg and _key(arg) == key:
            return arg.split("=", 1)[1]
    return None


def run_dir_of(args: list[str]) -> tuple[Path, Path | None] | None:
    """(run dir, checkpoint) named by ``resume=<run dir>`` or ``ckpt_path=<run dir or a file in
    its checkpoints/>``."""
    resume = _value(args, "resume")
    if resume and resume.lower() not in ("true", "false", "null", "none"):
        run_dir = Path(resume).expanduser().resolve()
        return run_dir, latest_checkpoint(run_dir)
    ckpt = _value(args, "ckpt_path")
    if ckpt and ckpt.lower() not in ("null", "none"):
        path = Path(ckpt).expanduser().resolve()
        if path.is_dir():  # a run dir (or its checkpoints/): continue it like resume=<run dir>
            run_dir = path.parent if path.name == "checkpoints" else path
            checkpoint = run_dir / LAST_CHECKPOINT
            return run_dir, checkpoint if checkpoint.is_file() else None
        if path.parent.name == "checkpoints":
            return path.parent.parent, path
    return None


def resume_arguments(args: list[str]) -> list[str]:
    """Rewrite a single-run command line so a resumed run continues where it stopped.

    ``resume=<run dir>`` (or ``ckpt_path`` inside a run dir) keeps the run dir (``hydra.run.dir``)
    and replays the run's original overrides; arguments given now take precedence.
    """
    if "-m" in args or "--multirun" in args:
        return args
    found = run_dir_of(args)
    if found is None:
        return args
    run_dir, checkpoint = found
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        return args  # a checkpoint outside an imgcls run dir: plain Lightning resume
    given = {_key(a) for a in args if "=" in a}
    original = yaml.safe_load(overrides_file.read_text()) or []
    replayed = [
        o for o in original if _key(o) not in given | {"ckpt_path", "resume", "hydra.run.dir"}
    ]
    kept = [a for a in args if _key(a) not in ("resume", "ckpt_path")]
    if checkpoint is None:
        log.warning(f"{run_dir} has no checkpoint yet: starting that run again from scratch")
    ckpt_arg = [f"ckpt_path={checkpoint}"] if checkpoint is not None else []
    return [*replayed, *kept, *ckpt_arg, f"hydra.run.dir={run_dir}"]
