"""Sample with a config's solvers and score them against the exact solution.

    python scripts/sample.py --config experiments/configs/quickstart.py --workdir outputs/quickstart

Config variants and overrides: `--config experiments/configs/quickstart.py:smoke`, `--config.nfe=5`.
"""

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import oracle_quickstart

if __name__ == "__main__":
    cli.main(oracle_quickstart.run, workdir="outputs/quickstart",
             workdir_help="Directory for the results (JSON and PNG).")
