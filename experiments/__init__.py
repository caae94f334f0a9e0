"""Experiments: configs (`experiments/configs/*.py`, `get_config(arg)`) and the `run(config, workdir)` functions
that the thin scripts in `scripts/` call."""
