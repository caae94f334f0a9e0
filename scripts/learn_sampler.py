"""Learn a sampler (OLSS, a solver schedule or the multistep DP) for a model, one file per NFE, and score it.

    python scripts/learn_sampler.py --config experiments/configs/learn_sampler.py:model=digits_vp,method=olss \
        --workdir outputs/learned_vp

Config variants and overrides: `learn_sampler.py:model=oracle,method=search`, `--config.nfes='(5, 10)'`,
`--config.options='{"budget": 300}'`.
"""

import cli  # noqa: F401  (first: the repository on sys.path, quiet logs)
from fastsamplers.experiments.runs import learned_samplers

if __name__ == "__main__":
    cli.main(learned_samplers.run, workdir="outputs/learned",
             workdir_help="Directory for the learned-sampler files and the results JSON.")
