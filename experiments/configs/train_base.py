"""Every key of a training config, with its default (`base_config()`); experiment files change values, never add
keys, so a misspelt override (`--config.train.num_step=...`) fails at once.

Keys left None (`placeholder`) take the component's own default; set them from the command line like any other,
e.g. `--config.process.sigma_min=1e-4`.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def base_config():
    """The unlocked base config: every key a training run reads."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # the root key; step s uses fold_in(train_key, s)

    c.data = ml_collections.ConfigDict()
    c.data.name = "moons"  # experiments.train.data.DATASETS
    c.data.image_sizes = ()  # images: train at each size (the loss is their mean); () = native size
    c.data.path = placeholder(str)  # "folder" and "npz" datasets
    c.data.channels = placeholder(int)  # "folder": 1 or 3
    c.data.npz_key = placeholder(str)  # "npz": the array's name
    c.data.noise = placeholder(float)  # 2-D sets: their noise level
    c.data.scale = placeholder(float)  # 2-D sets: x -> scale * x + shift
    c.data.shift = placeholder(float)

    c.process = ml_collections.ConfigDict()
    c.process.name = "ot"  # schedules.PROCESSES
    c.process.sigma_min = placeholder(float)  # "ot": the noise left at t = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"  # models.NETWORKS; the options are those of the sub-config of that name
    c.model.input_scaling = "none"  # "none" | "edm" (models.conditioning)
    c.model.sigma_data = 0.5
    c.model.mlp = ml_collections.ConfigDict(
        dict(hidden=256, depth=3, embed_dim=64, activation="silu", time_input="sinusoidal", zero_init_output=True))
    c.model.unet = ml_collections.ConfigDict(
        dict(channels=32, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(8,), num_heads=4,
             num_groups=8, num_classes=0, time_scale=1000.0))
    # time_scale (unet): t x time_scale enters the sinusoidal time embedding (1000: DDPM's; smaller is smoother in t)
    # num_classes > 0 (unet, dit, tarflow): class-conditional on the dataset's labels; num_classes is the null label
    c.model.dit = ml_collections.ConfigDict(
        dict(patch_size=2, hidden=128, depth=4, num_heads=4, mlp_ratio=4.0, num_classes=0))
    # a normalizing flow (models/tarflow.py); image_size and channels come from the data
    c.model.tarflow = ml_collections.ConfigDict(
        dict(patch_size=2, num_blocks=4, layers_per_block=2, hidden=128, num_heads=4, mlp_ratio=4.0, num_classes=0))

    c.loss = ml_collections.ConfigDict()
    c.loss.prediction = "velocity"  # "eps" | "x0" | "v" | "velocity"
    c.loss.time_sampling = "uniform"  # "uniform" | "logit_normal" | "log_normal" (experiments.train.losses)
    c.loss.t_min = placeholder(float)  # training times lie in [t_min, t_max]; None = the process's ends
    c.loss.t_max = placeholder(float)
    c.loss.time_mean = 0.0  # logit_normal / log_normal location and scale
    c.loss.time_std = 1.0
    c.loss.coupling = "independent"  # experiments.train.couplings.COUPLINGS: "independent" | "ot" | "sinkhorn"
    c.loss.ot_solver = placeholder(str)  # "ot": "optax" | "scipy"
    c.loss.ot_warm_start = placeholder(int)  # "ot", scipy: Sinkhorn iterations before the exact solve; 0 = off
    c.loss.sinkhorn_epsilon = placeholder(float)  # relative to the batch's mean squared distance
    c.loss.sinkhorn_sampling = placeholder(str)  # "joint" | "conditional"
    c.loss.sinkhorn_threshold = placeholder(float)  # marginal-error tolerance
    c.loss.sinkhorn_max_iterations = placeholder(int)
    c.loss.sinkhorn_lse_mode = placeholder(bool)  # log-domain updates: robust to underflow, 4-5x slower
    c.loss.noise_std = 0.05  # flows: Gaussian noise augmentation of the data (and the denoising step's sigma)
    c.loss.label_dropout = 0.1  # class-conditional models: P(label -> the null label) per example, for guidance

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 10_000
    c.train.batch_size = 256  # global, over all devices
    c.train.lr = 1e-3
    c.train.lr_schedule = "constant"  # "constant" | "cosine" (to 0 at num_steps)
    c.train.warmup_steps = 0
    c.train.weight_decay = 0.0  # AdamW's decoupled weight decay
    c.train.b1 = 0.9
    c.train.b2 = 0.999
    c.train.grad_clip = 1.0  # global-norm clipping; 0 = off
    c.train.ema_decay = 0.999
    # Steps per compiled call (lax.scan): > 1 removes the per-call dispatch cost for small models; keep 1 for conv
    # nets on CPU, where XLA runs convolutions inside a loop about 10x slower.
    c.train.steps_per_call = 1
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.sample_every = 0  # 0 = sample grids at the end only
    c.train.num_devices = 0  # 0 = every visible device (all hosts)
    c.train.async_checkpointing = True
    c.train.progress = True  # a tqdm progress bar with the loss and steps/s

    c.sample = ml_collections.ConfigDict()
    c.sample.solver = "euler"  # samplers.SOLVERS
    c.sample.order = placeholder(int)  # the solver's order option, where it has one
    c.sample.grid = "uniform"  # schedules.GRIDS, or "file:PATH" (a schedule file; {nfe}, {num_steps} filled in)
    c.sample.nfe = 50
    c.sample.t_min = placeholder(float)  # None = the process's ends
    c.sample.t_max = placeholder(float)
    c.sample.num_samples = 64  # per sample grid
    c.sample.use_ema = True
    # flows (samplers/causal.py): the inversion plan, a mode name or JSON ('[{"mode": "jacobi", ...}, ...]')
    c.sample.plan = "sequential"
    c.sample.guidance = 0.0  # class-conditional flows: classifier-free guidance weight
    # class-conditional UNet / DiT: samplers.guided's scale, uncond + scale (cond - uncond); 1 = conditional
    c.sample.guidance_scale = 1.0
    c.sample.annealed_guidance = False
    c.sample.denoise = True  # flows: the Tweedie step x + sigma^2 grad log p(x), sigma = loss.noise_std

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 1000
    c.eval.loss_batches = 4
    c.eval.w2 = True  # exact W2 between samples and data (scipy assignment; cost grows as num_samples^3)

    # BOSS straightening (experiments/train/straighten.py, experiments/configs/boss_straighten.py): fine-tune a
    # trained velocity model on its own Bellman-optimal steps. Off while teacher_workdir is None. When on, the
    # model, data and process sections must be the teacher's, train.batch_size counts teacher trajectories (each
    # gives num_steps intervals), and samples (grids, eval.json) use sample.solver on the Bellman steps, not
    # sample.grid / sample.nfe.
    c.boss = ml_collections.ConfigDict()
    c.boss.teacher_workdir = placeholder(str)  # the teacher run's --workdir (its latest checkpoint)
    c.boss.teacher_config = placeholder(str)  # that run's training config, "file.py[:arg]"
    c.boss.teacher_use_ema = True  # start from (and integrate) the teacher's EMA weights, else its raw ones
    c.boss.num_steps = 6  # K: the student's Euler steps, chosen by the Bellman DP among the teacher's times
    c.boss.teacher_steps = 100  # the fine grid: the candidate times, and the teacher solver's steps on it
    c.boss.teacher_grid = "uniform"  # schedules.GRIDS, between sample.t_max and sample.t_min
    c.boss.teacher_solver = "heun"  # samplers.SOLVERS
    c.boss.calibration_size = 256  # noises whose teacher trajectories price the Bellman DP
    c.boss.pool_size = 2048  # teacher trajectories at the chosen times, made once into WORKDIR/boss_pool.npz
    c.boss.pool_batch = 256  # trajectories per compiled teacher solve while making the pool

    # Data-free flow-map distillation (experiments/train/flow_map_training.py,
    # experiments/configs/flow_map_distill.py): a student
    # f(x, t, s) = x + (s - t) F(x, t, s), the teacher's network with a second time, trained from prior noise only
    # (losses.make_flow_map_loss). Off while teacher_workdir is None. When on, the model, data and process sections
    # must be the teacher's; samples (grids, eval.json) take flow_map.sample_steps steps of the flow_map solver on
    # sample.grid.
    c.flow_map = ml_collections.ConfigDict()
    c.flow_map.teacher_workdir = placeholder(str)  # the teacher run's --workdir (its latest checkpoint)
    c.flow_map.teacher_config = placeholder(str)  # that run's training config, "file.py[:arg]"
    c.flow_map.teacher_use_ema = True  # the teacher's EMA weights, else its raw ones
    c.flow_map.correction_weight = 1.0  # the marginal-correction loss's weight (0 turns it and the aux net off)
    c.flow_map.start_at_prior = 0.5  # the prediction loss's share of starts at the prior (t = t_max)
    c.flow_map.r_min = 0.02  # the correction's re-noising levels r ~ U(r_min, r_max)
    c.flow_map.r_max = 0.98
    c.flow_map.sample_steps = 1  # steps of the flow_map solver for samples and eval.json
    return c


def digits_unet(size, smoke, conditional=False):
    """The unlocked base config with what digits_fm and digits_vp share: digits at `size` px, a small UNet, and a
    cosine-decayed schedule of 6000 steps at batch 64 (about 150 ms a step on a 2-core CPU at 8 px); `smoke`
    shrinks it to seconds. `conditional`: conditioned on the digit's class (10 classes, label dropout 0.1),
    sampled with classifier-free guidance of scale 2."""
    c = base_config()
    c.data.name = "digits"
    c.data.image_sizes = (size,)
    c.model.name = "unet"
    c.model.unet.update(channels=8 if smoke else 32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(size // 2,), num_heads=2 if smoke else 4, num_groups=4 if smoke else 8)
    c.train.num_steps = 20 if smoke else 6000
    c.train.batch_size = 16 if smoke else 64
    c.train.lr = 2e-3
    c.train.lr_schedule = "cosine"
    c.train.warmup_steps = 2 if smoke else 200
    c.train.ema_decay = 0.99 if smoke else 0.999
    c.train.log_every = 10 if smoke else 200
    c.train.checkpoint_every = 10 if smoke else 1000
    c.train.sample_every = 0 if smoke else 1000
    c.train.progress = not smoke
    c.sample.num_samples = 16 if smoke else 100  # as many as eval.num_samples in smoke: one sampler compile
    c.eval.num_samples = 16 if smoke else 500
    c.eval.loss_batches = 1 if smoke else 8
    if conditional:
        c.model.unet.num_classes = 10
        c.loss.label_dropout = 0.1
        c.sample.guidance_scale = 2.0
    return c
