"""hydra-optuna-sweeper's sweeper, refusing searched keys the config lacks (Optuna loads late)."""

import sys
from typing import Any

from omegaconf import OmegaConf

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
            config, missing = self.sweeper.config, object()
            for name in config.hydra.sweeper.get("params") or {}:
                key = name.lstrip("+~")  # not a group choice (a/b) or a key the search appends
                if "/" in key or name.startswith("+"):
                    continue
                if OmegaConf.select(config, key, default=missing) is missing:
                    group = key.split(".", 1)[0]
                    choice = config.hydra.runtime.choices.get(group)
                    owner = f"{group}={choice}" if choice else "the composed config"
                    print(
                        f"error: hparams_search searches {key}, which {owner} does not have; "
                        f"pick a {group} that has it or search your own hydra.sweeper.params",
                        file=sys.stderr,
                    )
                    raise SystemExit(2)
            try:
                super().sweep(arguments)
            except ValueError:  # Optuna's "Record does not exist": the best of no completed trial
                import optuna

                study = optuna.load_study(
                    study_name=self.sweeper.study_name, storage=self.sweeper.storage
                )
                if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                    raise
