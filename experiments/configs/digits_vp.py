"""Denoising score matching (eps prediction) on the VP linear process for scikit-learn's digits, small UNet.

Launch (from the repository root):

    python scripts/train.py --config experiments/configs/digits_vp.py --workdir outputs/digits_vp

Variants (`digits_vp.py:ARG`): `prediction=eps|x0|v` (default eps), `process=vp_linear|vp_cosine|edm`
(EDM uses EDM's input scaling and log-normal times), `size=8|16|32` (default 8, the native size), `smoke` for tests,
`conditional` a class-conditional UNet (10 digit classes, label dropout 0.1) sampled with classifier-free guidance
of scale 2 (`samplers.guided`), `time_scale=S` the UNet's time-embedding scale (t x S enters the sinusoids; default
1000 as in DDPM, smaller is smoother in t); flags combine, e.g. `conditional,smoke`. Launch the conditional run with

    python scripts/train.py --config experiments/configs/digits_vp.py:conditional --workdir outputs/digits_vp_cond

Overrides: `--config.sample.solver=deis_tab --config.sample.order=3 --config.sample.grid=quadratic`;
conditional: `--config.sample.guidance_scale=1.0` (unguided), `--config.loss.label_dropout=0.2`.
"""

from __future__ import annotations

from fastsamplers.experiments.configs import parse_arg
from fastsamplers.experiments.configs.train_base import digits_unet


def get_config(arg=None):
    arg = parse_arg(arg, prediction="eps", process="vp_linear", size=0, smoke=False, conditional=False,
                    time_scale=1000.0)
    c = digits_unet(arg.size or 8, arg.smoke, arg.conditional)
    c.model.unet.time_scale = arg.time_scale
    c.process.name = arg.process
    c.loss.prediction = arg.prediction
    if arg.process == "edm":
        c.model.input_scaling = "edm"
        c.loss.time_sampling = "log_normal"
        c.loss.time_mean, c.loss.time_std = -1.2, 1.2  # EDM's P_mean, P_std
    c.sample.solver = "deis_tab"
    c.sample.order = 3
    c.sample.grid = "quadratic" if arg.process != "edm" else "edm"
    c.sample.nfe = 5 if arg.smoke else 20
    c.lock()
    return c
