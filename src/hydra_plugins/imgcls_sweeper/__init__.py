"""``hydra.sweeper._target_`` of configs/hparams_search: hydra-optuna-sweeper's sweeper with the
checks of ``imgcls.search``. Hydra takes sweepers only from this namespace package and imports
every module in it at start-up, so Optuna (slow to import) loads only when a search runs."""

from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class OptunaSearch(OptunaSweeper):
    """Refuses a searched key the config lacks; a study where every trial failed is reported."""

    def __init__(self, max_failure_rate: float, **options: Any) -> None:
        # the plugin applies its max_failure_rate per batch of n_jobs trials and only logs;
        # imgcls.sweeps.SweepSummary applies this one to the whole search and exits 1
        super().__init__(max_failure_rate=1.0, **options)

    def sweep(self, arguments: list[str]) -> None:
        from imgcls.search import run_search  # imports Optuna: only when a search runs

        run_search(self.sweeper, super().sweep, arguments)
