"""The runs behind the scripts: each module holds the `run(config, workdir)` (or benchmark) function one script
calls, and tests call it too. `oracle_quickstart` (scripts/sample.py), `schedule_distillation`
(scripts/distill_schedule.py), `sampler_tables` (scripts/evaluate.py), `bottleneck_benchmark`
(scripts/sample_bottleneck.py, scripts/benchmark_bottleneck.py), `causal_inversion` (scripts/causal_metrics.py,
scripts/benchmark_causal.py), `fid_protocol` (scripts/fid_pretrained.py), `learned_samplers` (scripts/learn_sampler.py),
`solver_benchmark` (scripts/benchmark_solvers.py), `pretrained_benchmark` with its two worker sides
`pretrained_benchmark_jax` and `pretrained_benchmark_torch` (scripts/benchmark_pretrained.py), and the
benchmark_*.py scripts' `schedule_benchmark`, `learned_benchmark`, `stochastic_benchmark`, `guidance_benchmark`,
`coupling_benchmark`, `fm_benchmark`, `boss_benchmark`. `sources` is the one registry of where their models come from
(`config.source`).

The top layer of the library: it may import every other part of experiments (configs, train, metrics, report) and
the packages below; only `scripts` import it.
"""
