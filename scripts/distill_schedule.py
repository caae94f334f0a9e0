"""Distil a step schedule for a model and solver, save it as a schedule file, and score it against the exact map.

    python scripts/distill_schedule.py --config experiments/configs/distill_oracle.py --workdir outputs/distill

Config variants and overrides: `--config experiments/configs/distill_oracle.py:smoke`, `...:method=gits,nfe=6`,
`--config.refine.enabled=True`.
"""

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import schedule_distillation

if __name__ == "__main__":
    cli.main(schedule_distillation.run, workdir="outputs/distill",
             workdir_help="Directory for the schedule file, the results JSON and the plot.")
