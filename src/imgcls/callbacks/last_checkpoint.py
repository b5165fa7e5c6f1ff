"""``checkpoints/last.ckpt`` after every epoch: what ``resume=<run dir>`` continues from."""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint

from imgcls.run_dir import CHECKPOINT_DIR, LAST_CHECKPOINT_NAME


class LastCheckpoint(ModelCheckpoint):
    """Writes ``<run dir>/checkpoints/last.ckpt`` after every epoch, whatever val/acc did.

    Lightning's ``save_last`` only writes it when a top-k checkpoint is saved. The file name is
    the run-dir contract's (``imgcls.run_dir.LAST_CHECKPOINT``), not a config value.
    """

    def __init__(self, run_dir: str | Path, every_n_epochs: int = 1) -> None:
        super().__init__(
            dirpath=Path(run_dir) / CHECKPOINT_DIR,
            filename=LAST_CHECKPOINT_NAME,
            monitor=None,
            save_top_k=1,
            every_n_epochs=every_n_epochs,
            enable_version_counter=False,
        )
