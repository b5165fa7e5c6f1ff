"""The model summary printed at the start of fit: Lightning's rich table without the FLOPs column.

Lightning 2.6 adds a ``FLOPs`` column and a ``Total FLOPs`` line that read 0 unless the module
defines an example input; a column of zeros only misleads, so this summary leaves both out.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)

LEFT_OUT = ("FLOPs",)


class ModelSummary(RichModelSummary):
    """``RichModelSummary`` minus FLOPs: layers, types, parameters, modes, then the totals."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name not in LEFT_OUT]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:  # the first, " ", numbers the layers
            right = name not in (" ", "Name", "Type", "Mode")
            table.add_column(
                name,
                justify="right" if right else "left",
                no_wrap=name == "Name",
                style="dim" if name == " " else None,
            )
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"Trainable params: {get_human_readable_count(int(trainable_parameters))}\n"
            f"Non-trainable params: {get_human_readable_count(int(frozen))}\n"
            f"Total params: {get_human_readable_count(int(total_parameters))}\n"
            f"Total estimated model params size (MB): {get_formatted_model_size(model_size)}\n"
            f"Modules in train mode: {total_training_modes['train']}\n"
            f"Modules in eval mode: {total_training_modes['eval']}",
            highlight=False,
        )
