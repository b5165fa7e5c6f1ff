"""hydra-optuna-sweeper's sweeper: one failure rate over the whole search, an all-failed study."""

from typing import Any

try:  # the `sweep` extra; without it Hydra must not warn about this plugin at every start
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # hparams_search=... then names the missing plugin in Hydra's own error
    OptunaSweeper = None

if OptunaSweeper is not None:

    class OptunaSearch(OptunaSweeper):
        def __init__(self, max_failure_rate: float, **options: Any) -> None:
            # the plugin applies its max_failure_rate per batch of n_jobs trials and only logs;
            # imgcls.sweeps.SweepSummary applies this one to the whole search and exits 1
            super().__init__(max_failure_rate=1.0, **options)

        def sweep(self, arguments: list[str]) -> None:
            try:
                super().sweep(arguments)
            except ValueError:  # Optuna's "Record does not exist": the best of no completed trial
                import optuna

                study = optuna.load_study(
                    study_name=self.sweeper.study_name, storage=self.sweeper.storage
                )
                if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                    raise
