"""FID of a published checkpoint with one solver x time grid x NFE: the standard protocol (50,000 samples, uint8
images, Inception-v3 pool3 statistics against a reference), sharded over devices and hosts, resumable.

Launch (from the repository root; nothing is downloaded: the checkpoint, the Inception weights and the reference are
files you have; the runner is `experiments.runs.fid_protocol`):

    python scripts/fid_pretrained.py --config experiments/configs/fid_pretrained.py:solver=tab3 \
        --config.checkpoint=ckpt/ddpm-cifar10-32 --config.fid_weights=inception_fid.npz \
        --config.reference=cifar10_stats.npz --config.grid=logsnr --config.nfe=10 --workdir outputs/fid/tab3_logsnr_10

`fid_weights` is the .npz of `scripts/convert_inception_weights.py` (pytorch-fid's FID Inception). `reference` is:
  an .npz with `mu` and `sigma` (pool3 mean and covariance: pytorch-fid's statistics files, and EDM's fid-refs such
    as cifar10-32x32.npz, hold exactly these two arrays);
  an .npz with `pool_3` (pool3 activations, (n, 2048): score_sde's assets/stats/cifar10_stats.npz holds these, not
    mu/sigma; the statistics are computed from them);
  an .npz of uint8 images (key `images`, else its first array; NHWC), or a folder of PNG / JPEG images: their
    statistics are computed with the run's feature network and cached in WORKDIR/reference_stats/.

The DEIS paper's CIFAR-10 table (Zhang & Chen 2022: DDIM, DEIS tAB1-3, rhoRK, iPNDM and DPM-Solver++ x NFE 5, 10, 20,
50 x time grids), one workdir per cell, then one table from their results.json files. With score_sde's VP DDPM++
checkpoint (the DEIS paper's model) and its statistics file:

    CKPT=$HOME/ckpt/vp/cifar10_ddpmpp_continuous/checkpoint_8   # or a diffusers folder, e.g. ddpm-cifar10-32
    LOAD="--config.layout=score_sde --config.model_config=vp/cifar10_ddpmpp_continuous"   # "" for diffusers
    for solver in ddim tab1 tab2 tab3 rhork3 ipndm dpmpp_2m dpmpp_3m; do
      for grid in uniform quadratic logsnr; do
        for nfe in 5 10 20 50; do
          python scripts/fid_pretrained.py --config experiments/configs/fid_pretrained.py:solver=$solver $LOAD \
            --config.checkpoint=$CKPT --config.fid_weights=$HOME/fid/inception_fid.npz \
            --config.reference=$HOME/fid/cifar10_stats.npz \
            --config.grid=$grid --config.nfe=$nfe --workdir outputs/fid_cifar10/${solver}_${grid}_${nfe}
        done
      done
    done
    python scripts/make_table.py $(printf -- '--rows %s ' outputs/fid_cifar10/*/results.json) --out outputs/fid_cifar10

A killed command rerun with the same workdir continues from its finished shards. Several hosts: the same command on
each with --distributed (see scripts/fid_pretrained.py); one GPU host uses all its devices.

Variants (`fid_pretrained.py:ARG`, comma-separated):
  solver=NAME  a row of the DEIS table (`TABLE_SOLVERS`): ddim, tab1, tab2, tab3 (deis_tab of order 2, 3, 4), rhork3
               (deis_rhork 3kutta), ipndm, dpmpp_2m, dpmpp_3m; default tab3 (ddim with smoke). Any registered solver:
               `--config.solver=deis_rhoab --config.solver_options="{'order': 3}" --config.label=...` (a dict).
  smoke        the committed tests/fixtures/pretrained/ddpm model, 12 samples in shards of 4, DDIM at NFE 2 and the
               `random_projection` test feature (not FID): for tests, seconds on a CPU.
Overrides: `--config.num_samples=10000`, `--config.guidance_scale=2.0 --config.null_label=10` (a class-conditional
checkpoint), `--config.grid=file:outputs/oss/oss_s{num_steps}.json` (a distilled schedule; {nfe} and {num_steps} are
filled in), `--config.batch_size=1000`, `--config.num_devices=1`. `source` names where the model comes from
(`experiments.runs.sources`; "pretrained" reads the checkpoint keys below).
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections.config_dict import placeholder

from fastsamplers.core import Registry
from fastsamplers.experiments.configs import parse_arg

# The rows of the DEIS paper's tables: name -> (row label, registered solver, options). tAB-r is deis_tab of order
# r + 1; the labels are those of experiments/configs/evaluate.py.
TABLE_SOLVERS = Registry("solver", {
    "ddim": ("DDIM", "ddim", {}),
    "tab1": ("DEIS tAB1", "deis_tab", {"order": 2}),
    "tab2": ("DEIS tAB2", "deis_tab", {"order": 3}),
    "tab3": ("DEIS tAB3", "deis_tab", {"order": 4}),
    "rhork3": ("DEIS rhoRK3", "deis_rhork", {"method": "3kutta"}),
    "ipndm": ("iPNDM", "ipndm", {"order": 4}),
    "dpmpp_2m": ("DPM-Solver++(2M)", "dpmpp_2m", {}),
    "dpmpp_3m": ("DPM-Solver++(3M)", "dpmpp_3m", {}),
}, unknown="unknown {kind}={name!r}; the table's solvers: {valid} (any registered solver: --config.solver=NAME "
           "--config.solver_options=\"{{...}}\")")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE_CHECKPOINT = os.path.join(ROOT, "tests", "fixtures", "pretrained", "ddpm")


def get_config(arg=None):
    arg = parse_arg(arg, smoke=False, solver="")
    name = arg.solver or ("ddim" if arg.smoke else "tab3")
    label, solver, options = TABLE_SOLVERS.lookup(name)
    c = ml_collections.ConfigDict()
    c.seed = 0  # sample k starts from fold_in(fold_in(PRNGKey(seed), 0), k); stochastic solvers use stream 1

    # The model: experiments.runs.sources ("pretrained": models.pretrained.load; the options of one layout only).
    c.source = "pretrained"
    c.checkpoint = SMOKE_CHECKPOINT if arg.smoke else ""  # a diffusers folder or a score_sde checkpoint_N
    c.layout = ""  # "" = detected; "diffusers" | "score_sde"
    c.model_config = ""  # score_sde: the model config (a preset name such as vp/cifar10_ddpmpp_continuous, or .json)
    c.params = "params_ema"  # score_sde: the EMA weights (what score_sde samples with), or "params"
    c.scheduler_config = ""  # diffusers: a scheduler_config.json instead of the one beside the UNet
    c.variant = ""  # diffusers: diffusion_pytorch_model.<variant>.safetensors
    c.null_label = placeholder(int)  # diffusers, class-conditional: the "no class" label (needed for guidance)

    # The sampler.
    c.label = label  # the row's label in results.json (scripts/make_table.py); "" = the solver's name and options
    c.solver = solver  # samplers.SOLVERS
    c.solver_options = ml_collections.ConfigDict(options)
    c.grid = "logsnr"  # schedules.GRIDS, or "file:PATH" for a schedule file
    c.nfe = 2 if arg.smoke else 10  # the budget of model evaluations per sample; steps = solver.steps_for_nfe(nfe)
    c.t_min = placeholder(float)  # the grid's ends; None = the process's
    c.t_max = placeholder(float)
    c.guidance_scale = 1.0  # class-conditional checkpoints: classifier-free guidance (1 = the conditional model)

    # The protocol.
    c.num_samples = 12 if arg.smoke else 50_000
    c.feature = "random_projection" if arg.smoke else "inception"  # "inception" (FID) | "random_projection" (tests)
    c.feature_dim = 8  # random_projection only: its dimension
    c.fid_weights = ""  # inception: the .npz of scripts/convert_inception_weights.py
    c.reference = ""  # mu/sigma .npz, pool_3 .npz, uint8 images .npz, or a folder of images (see above)
    c.allow_nonfinite = False  # True: non-finite samples are counted and left out instead of stopping the run

    # Scale and resumption.
    c.batch_size = 4 if arg.smoke else 500  # samples per device call, over all the devices (rounded up to them)
    c.shard_size = 4 if arg.smoke else 5_000  # samples per statistics file (what a killed run keeps); a multiple of
    # batch_size wastes nothing (the last batch of a shard is padded)
    c.keep_shards = False  # True: keep shards/ after the run (a later run with other num_samples reuses them)
    c.num_devices = 0  # local devices to shard over (0 = all)
    c.num_save = 4 if arg.smoke else 100  # the first samples (of shard 0) saved as samples.npz (uint8) and .png
    c.lock()
    return c
