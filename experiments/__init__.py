"""Experiments, one layer a subpackage: `configs` (one `get_config(arg)` file per experiment), `train` (the training
loop, checkpoints, losses, couplings, data), `metrics` (FID, FD-digits, exact W2, FLOPs), `report` (tables, figures,
provenance) and `runs` (the `run(config, workdir)` behind each script in `scripts/`)."""
