"""``hydra.sweeper._target_`` of configs/hparams_search: hydra-optuna-sweeper's sweeper with the
checks of ``imgcls.search``. Hydra takes sweepers only from this namespace package and imports
every module in it at start-up, so Optuna (slow to import) loads only when a search runs."""

import sys
from typing import Any

try:  # the `sweep` extra; without it Hydra must not warn about this plugin at every start
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # hparams_search=... then names the missing plugin in Hydra's own error
    OptunaSweeper = None

if OptunaSweeper is not None:

    class OptunaSearch(OptunaSweeper):
        """Refuses a searched key the config lacks; a study where every trial failed is reported."""

        def __init__(self, max_failure_rate: float, **options: Any) -> None:
            # the plugin applies its max_failure_rate per batch of n_jobs trials and only logs;
            # imgcls.sweeps.SweepSummary applies this one to the whole search and exits 1
            super().__init__(max_failure_rate=1.0, **options)

        def sweep(self, arguments: list[str]) -> None:
            from imgcls.search import completed_trials, missing_search_key  # imports Optuna

            message = missing_search_key(self.sweeper.config)
            if message:
                print(f"error: {message}", file=sys.stderr)
                raise SystemExit(2)
            try:
                super().sweep(arguments)
            except ValueError:  # Optuna's "Record does not exist": the best of no completed trial
                if completed_trials(self.sweeper.study_name, self.sweeper.storage):
                    raise
