r"""FID of a published checkpoint with one solver x time grid x NFE: the standard protocol (50,000 samples, uint8
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
Presets that rebuild a published table (`PRESETS`; `fid_pretrained.py:preset=NAME,row=ROW`): the preset names the
checkpoint's layout, the noise range, the NFE columns and, per row, the solver, its options and its time grid as the
source ran them; `experiments/results/published/NAME.json` holds the source's numbers, and
`scripts/make_table.py --published NAME` prints ours beside them with the difference. The EDM CIFAR-10 table
(diff-sampler's settings: sigma 80 -> 0.002, no final step to 0), one workdir per cell:

    for row in euler heun dpmpp_3m unipc3 deis_tab3 ipndm4; do
      for nfe in 5 6 8 10; do
        python scripts/fid_pretrained.py \
          --config experiments/configs/fid_pretrained.py:preset=edm_cifar10_uncond_vp,row=$row \
          --config.checkpoint=$HOME/ckpt/edm-cifar10-32x32-uncond-vp --config.fid_weights=$HOME/fid/inception_fid.npz \
          --config.reference=$HOME/fid/cifar10-32x32.npz --config.nfe=$nfe --workdir outputs/edm_cifar10/${row}_${nfe}
      done
    done
    python scripts/make_table.py $(printf -- '--rows %s ' outputs/edm_cifar10/*/results.json) \
      --published edm_cifar10_uncond_vp --out outputs/edm_cifar10

The checkpoint is the folder `scripts/convert_checkpoint.py --layout edm` wrote from EDM's pickle. The reference
statistics are the user's: EDM's `fid.py ref --data=cifar10-32x32.zip --dest=cifar10-32x32.npz` writes the mu/sigma
.npz read here (or give the dataset's images as an .npz or a folder, see `reference` above). Our learned samplers sit
in the same table as a row of their own: `--config.solver=file --config.solver_options="{'path': 'LEARNED.json'}"
--config.label='OLSS (ours)'` (the file's own grid is used; scripts/learn_sampler.py makes it on the same model).
Other presets: edm_ffhq64_uncond_vp and edm_imagenet64_cond_adm (the same rows),
score_sde_cifar10_ddpmpp_deep_continuous (score_sde_pytorch's checkpoint_8.pth converted with --layout
score_sde_pytorch), adm_imagenet64 (guided-diffusion's 64x64 model), adm_imagenet64_guided (the same with
classifier guidance: `--config.classifier=` the converted 64x64_classifier folder; `--config.classifier_scale=`
overrides the release's 1.0), and the latent dit_xl2_256 and sit_xl2_256 (converted with their VAE; classifier-free
guidance 1.5 on channels 0-2 as published; the FID is on the decoded images).

Apple's TarFlow on AFHQ 256 (`tarflow_afhq256`: a normalizing flow, so no solver, grid or NFE): the released
afhq_model_8_768_8_8_0.07.pth converted with `scripts/convert_checkpoint.py ... --layout tarflow`, sampled as
ml-tarflow's evaluate_fid.py does (z per sample from the noise stream, `samplers.causal.invert` with the row's plan
and annealed guidance `flow_guidance` (the notebook's 1: no AFHQ value is published), the self-denoising step, clip
to [-1, 1]); the reference is the user's AFHQ training images (a folder, or prepare_fid_stats' statistics saved as
mu/sigma). Each row reports its dependent network passes (`samplers.causal`'s info), not an NFE:

    for row in sequential jacobi gs_jacobi; do
      python scripts/fid_pretrained.py --config experiments/configs/fid_pretrained.py:preset=tarflow_afhq256,row=$row \
        --config.checkpoint=$HOME/ckpt/tarflow_afhq256 --config.fid_weights=$HOME/fid/inception_fid.npz \
        --config.reference=$HOME/data/afhq/train --config.batch_size=256 --workdir outputs/tarflow_afhq/$row
    done
    python scripts/make_table.py $(printf -- '--rows %s ' outputs/tarflow_afhq/*/results.json) \
      --published tarflow_afhq256 --out outputs/tarflow_afhq

Any TarFlow folder without a preset: `--config.solver= --config.flow_plan=sequential` (or JSON: a dict of
`samplers.causal.BlockPlan`'s fields, or a list with one per block, e.g. the CRM / IGM plan of
`samplers.causal_metrics.recommend_plan`), `--config.flow_guidance=W --config.flow_annealed_guidance=False
--config.flow_attn_temp=T --config.denoise=LR` (evaluate_fid's cfg, annealed_guidance, attn_temp and
self_denoising_lr; denoise=0 skips the step).

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
# diff-sampler's rows (zju-pi/diff-sampler, diff-solvers-main README "General Settings"): row -> (label, solver,
# options, grid, grid options). Its Heun takes a full Heun step on every interval (NFE 2 per step, no final Euler
# step): on the edm process (gamma = sigma) that is deis_rhork's 2heun tableau in (y, gamma), not `heun`, whose last
# step is Euler as EDM's own sampler's is. tAB3 is deis_tab of order 4 (the DEIS paper's tAB-r has order r + 1).
_DIFF_SAMPLER_ROWS = {
    "euler": ("Euler", "euler", {}, "edm", {"rho": 7.0}),
    "heun": ("Heun", "deis_rhork", {"method": "2heun"}, "edm", {"rho": 7.0}),
    "dpmpp_3m": ("DPM-Solver++(3M)", "dpmpp_3m", {}, "logsnr", {}),
    "unipc3": ("UniPC-3", "unipc", {"order": 3, "variant": "bh2"}, "logsnr", {}),
    "deis_tab3": ("DEIS-tAB3", "deis_tab", {"order": 4}, "vp_time", {"exponent": 2.0}),
    "ipndm4": ("iPNDM-4", "ipndm", {"order": 4}, "edm", {"rho": 7.0}),
}
_EDM = dict(layout="edm", t_min=0.002, t_max=80.0, nfes=(5, 6, 8, 10), rows=_DIFF_SAMPLER_ROWS)
_VP_ROWS = {"dpmpp_3m": ("DPM-Solver++(3M)", "dpmpp_3m", {}, "logsnr", {}),
            "unipc3": ("UniPC-3", "unipc", {"order": 3, "variant": "bh2"}, "logsnr", {}),
            "deis_tab3": ("DEIS-tAB3", "deis_tab", {"order": 4}, "logsnr", {}),
            "ipndm4": ("iPNDM-4", "ipndm", {"order": 4}, "edm", {"rho": 7.0})}


def _ddpm_row(label, **options):
    """The published ancestral sampler's row: DDPM with the learned variance on guided-diffusion's respaced steps,
    its last step to t = 0 the point mass at x0_hat (append_zero: 250 steps are 250 model calls)."""
    return (label, "ddpm", dict(variance="learned", **options), "respaced", {"append_zero": True})


# TarFlow AFHQ 256: 8 blocks of 32 x 32 = 1024 tokens. Guidance: no AFHQ value is published (evaluate_fid.py's cfg
# defaults to 0; the README's example is ImageNet 64's 2.3), so the notebook's guided value 1 (sample.ipynb, cell 3,
# there constant), annealed as evaluate_fid.py:77 runs it. The plans are those of the GS-Jacobi paper's comparison
# (Liu & Qin 2025): sequential (the reference), Jacobi on every block, and GS-Jacobi with 8 equal segments on every
# block; both parallel plans stop at tol 1e-4 and are capped at the exact bound (the segment's length), so they
# change the samples by the tolerance only. A CRM / IGM plan (samplers.causal_metrics.recommend_plan, from a forward
# pass on AFHQ images) is given as JSON: --config.flow_plan='[{...}, ...]' --config.label='GS-Jacobi (CRM)'.
_TARFLOW_AFHQ = dict(flow_guidance=1.0, rows={
    "sequential": ("Sequential", "sequential"),
    "jacobi": ("Jacobi", '{"mode": "jacobi", "tol": 1e-4}'),
    "gs_jacobi": ("GS-Jacobi (8 segments)", '{"mode": "gs_jacobi", "segments": 8, "tol": 1e-4}'),
})

# preset -> the published table it rebuilds (experiments/results/published/<name>.json) and how: the checkpoint's
# layout, the grid's ends (None: the process's), the NFE columns and the rows.
PRESETS = Registry("preset", {
    "edm_cifar10_uncond_vp": dict(_EDM, published="edm_cifar10_uncond_vp"),
    "edm_ffhq64_uncond_vp": dict(_EDM, published="edm_ffhq64_uncond_vp"),
    "edm_imagenet64_cond_adm": dict(_EDM, published="edm_imagenet64_cond_adm"),
    "score_sde_cifar10_ddpmpp_deep_continuous": dict(layout="score_sde_pytorch", t_min=None, t_max=None,
                                                     nfes=(5, 6, 8, 10), rows=_VP_ROWS,
                                                     published="score_sde_cifar10_ddpmpp_deep_continuous"),
    "adm_imagenet64": dict(layout="guided_diffusion", t_min=None, t_max=None, nfes=(5, 6, 8, 10, 20, 250),
                           rows=dict(_VP_ROWS, ddpm=_ddpm_row("DDPM, learned variance", clip_x0=1.0)),
                           published="adm_imagenet64"),
    # Latent DiT / SiT (converted with their VAE: `--layout dit|sit --vae FOLDER`; FID on the decoded images), with
    # classifier-free guidance 1.5 on latent channels 0-2 as their sample.py runs. The published numbers are DiT's 250
    # DDPM steps (the `ddpm` row: the ancestral sampler with the learned variance on the respaced grid, latents not
    # clipped) and SiT's best SDE sampler: our ODE rows sit beside them at the NFE columns given.
    "dit_xl2_256": dict(layout="dit", t_min=None, t_max=None, nfes=(10, 25, 50, 250), published="dit_xl2_256",
                        guidance_scale=1.5, rows={
                            "ddpm": _ddpm_row("DDPM, learned variance"),
                            "ddim": ("DDIM", "ddim", {}, "uniform", {}),
                            "dpmpp_2m": ("DPM-Solver++(2M)", "dpmpp_2m", {}, "logsnr", {}),
                            "unipc3": ("UniPC-3", "unipc", {"order": 3, "variant": "bh2"}, "logsnr", {}),
                            "deis_tab3": ("DEIS-tAB3", "deis_tab", {"order": 4}, "logsnr", {})}),
    "sit_xl2_256": dict(layout="sit", t_min=None, t_max=None, nfes=(10, 25, 50, 250), published="sit_xl2_256",
                        guidance_scale=1.5, rows={  # from t = 1 (pure noise): velocity solvers only
                            "euler": ("Euler", "euler", {}, "uniform", {}),
                            "heun": ("Heun", "heun", {}, "uniform", {})}),
    # With guided-diffusion's 64x64 classifier (--config.classifier=...) at the release's scale 1.0 (its README).
    "adm_imagenet64_guided": dict(layout="guided_diffusion", t_min=None, t_max=None, nfes=(5, 6, 8, 10, 20),
                                  rows=_VP_ROWS, published="adm_imagenet64", classifier_scale=1.0),
    # Apple's TarFlow on AFHQ 256 (afhq_model_8_768_8_8_0.07.pth converted with --layout tarflow), sampled as
    # ml-tarflow's evaluate_fid.py does: a flow preset's rows are (label, flow plan), no solver or grid.
    "tarflow_afhq256": dict(layout="tarflow", flow=True, published="tarflow_afhq256", **_TARFLOW_AFHQ),
}, unknown="unknown {kind} {name!r}; valid presets: {valid}")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE_CHECKPOINT = os.path.join(ROOT, "tests", "fixtures", "pretrained", "ddpm")


def get_config(arg=None):
    arg = parse_arg(arg, smoke=False, solver="", preset="", row="")
    preset = PRESETS.lookup(arg.preset) if arg.preset else None
    if preset is not None:
        if not arg.row or arg.solver:
            raise ValueError(f"preset={arg.preset} takes row=NAME (one of {list(preset['rows'])}), not solver=")
        rows = Registry("row", preset["rows"], ordered=True,
                        unknown="unknown {kind} {name!r} of preset {preset}; valid rows: {valid}")
        if preset.get("flow"):
            (label, flow_plan), solver, options, grid, grid_options = rows.lookup(arg.row, preset=arg.preset), "", \
                {}, "", {}
        else:
            label, solver, options, grid, grid_options = rows.lookup(arg.row, preset=arg.preset)
    elif arg.row:
        raise ValueError("row= needs preset=NAME (one of the presets: " + ", ".join(PRESETS) + ")")
    else:
        label, solver, options = TABLE_SOLVERS.lookup(arg.solver or ("ddim" if arg.smoke else "tab3"))
        grid, grid_options = "logsnr", {}
    if preset is None or not preset.get("flow"):
        flow_plan = ""
    c = ml_collections.ConfigDict()
    c.seed = 0  # sample k starts from fold_in(fold_in(PRNGKey(seed), 0), k); stochastic solvers use stream 1

    # The model: experiments.runs.sources ("pretrained": models.pretrained.load; the options of one layout only).
    c.source = "pretrained"
    c.checkpoint = SMOKE_CHECKPOINT if arg.smoke else ""  # a diffusers folder or a score_sde checkpoint_N
    c.layout = preset["layout"] if preset else ""  # "" = detected; else one of models.pretrained.LAYOUTS
    c.model_config = ""  # score_sde: the model config (a preset name such as vp/cifar10_ddpmpp_continuous, or .json)
    c.params = "params_ema"  # score_sde: the EMA weights (what score_sde samples with), or "params"
    c.scheduler_config = ""  # diffusers: a scheduler_config.json instead of the one beside the UNet
    c.variant = ""  # diffusers: diffusion_pytorch_model.<variant>.safetensors
    c.null_label = placeholder(int)  # diffusers, class-conditional: the "no class" label (needed for guidance)
    c.classifier = ""  # a converted noisy classifier folder (guided_diffusion): classifier guidance; "" = none

    # The sampler.
    c.label = label  # the row's label in results.json (scripts/make_table.py); "" = the solver's name and options
    c.solver = solver  # samplers.SOLVERS
    c.solver_options = ml_collections.ConfigDict(options)
    c.grid = grid  # schedules.GRIDS, or "file:PATH" for a schedule file
    c.grid_options = ml_collections.ConfigDict(grid_options)  # the grid's own options (rho, exponent, ...)
    c.nfe = 2 if arg.smoke else 10  # the budget of model evaluations per sample; steps = solver.steps_for_nfe(nfe)
    c.t_min = placeholder(float)  # the grid's ends; None = the process's
    c.t_max = placeholder(float)
    if preset is not None and preset.get("t_min") is not None:
        c.t_min, c.t_max = preset["t_min"], preset["t_max"]
    c.published = preset["published"] if preset else ""  # experiments/results/published/<name>.json, for the report
    c.guidance_scale = preset.get("guidance_scale", 1.0) if preset else 1.0  # class-conditional checkpoints:
    # classifier-free guidance (1 = the conditional model), on the channels the model's layout guides
    c.classifier_scale = preset.get("classifier_scale", 1.0) if preset else 1.0  # with `classifier`: its scale

    # A normalizing flow (the tarflow layout) instead: sampled as ml-tarflow's evaluate_fid.py does (set solver="").
    c.flow_plan = flow_plan  # samplers.causal's plan: a mode name or JSON ("" = a diffusion model, sampled by solver)
    c.flow_guidance = preset.get("flow_guidance", 0.0) if preset else 0.0  # evaluate_fid's cfg: a += w (a - a_u),
    # the same for b (0 = none; class-conditional flows)
    c.flow_annealed_guidance = True  # w (t + 1) / (T - 1) at token t, as evaluate_fid.py:77 (False: constant w)
    c.flow_attn_temp = 1.0  # evaluate_fid's attn_temp: divides the attention logits of the unconditional branch
    c.denoise = 1.0  # evaluate_fid's self_denoising_lr: x + denoise * noise_std^2 grad log p(x) (1 = Tweedie; 0 = off)

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
