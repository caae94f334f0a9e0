"""Distil step schedules for a published checkpoint (a latent DiT / SiT, EDM, ADM, ...): the checkpoint form of
`distill_checkpoint.py`, whose docstring says what is distilled and scored; only the model's keys differ.

    python scripts/distill_schedule.py --config experiments/configs/distill_pretrained.py:method=oss \
        --config.checkpoint=ckpt/dit-xl-256 --config.guidance_scale=1.5 --workdir outputs/oss_dit

The model comes from `models.pretrained.load(checkpoint)` (`experiments.runs.sources`, "pretrained"); a
class-conditional one is distilled and scored with balanced labels (sample k: class k mod the classes) and, at
`guidance_scale` other than 1, classifier-free guidance on the channels its layout guides (DiT's and SiT's 0-2). The
schedules are on the model's own time (a latent model's latents, no decoding). The student is DDIM for an eps or x0
model, Euler for a velocity one (`student=euler`).

Variants (`distill_pretrained.py:ARG`): method=oss|bellman|gits, student=ddim|euler, smoke (the committed DiT fixture,
batch 8, a 20-step teacher, step counts (2, 3): for tests).
"""

from __future__ import annotations

import os

from ml_collections.config_dict import placeholder

from fastsamplers.experiments.configs import distill_checkpoint, parse_arg
from fastsamplers.schedules.optimal import distillation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE_CHECKPOINT = os.path.join(ROOT, "tests", "fixtures", "dit", "dit")
# The keys of the "pretrained" source (experiments.runs.sources), replacing a trained run's.
_TRAINED_KEYS = ("train_config", "checkpoint_dir", "use_ema", "resolution")


def get_config(arg=None):
    arg = parse_arg(arg, method="oss", student="ddim", smoke=False, choices=dict(method=distillation.METHODS))
    config = distill_checkpoint.get_config(f"method={arg.method}" + (",smoke" if arg.smoke else ""))
    config.unlock()
    for key in _TRAINED_KEYS:
        del config[key]
    config.source = "pretrained"
    config.checkpoint = SMOKE_CHECKPOINT if arg.smoke else ""  # a converted folder, a diffusers folder, ...
    config.layout = ""  # "" = detected (models.pretrained.LAYOUTS)
    config.model_config = ""  # score_sde: its model config
    config.params = "params_ema"  # score_sde: EMA weights or "params"
    config.scheduler_config = ""  # diffusers: another scheduler_config.json
    config.variant = ""  # diffusers: diffusion_pytorch_model.<variant>.safetensors
    config.null_label = placeholder(int)  # diffusers, class-conditional: the "no class" label
    config.classifier = ""  # not used here (classifier guidance is the FID runner's)
    config.guidance_scale = 1.0  # classifier-free guidance of a class-conditional model (1: the conditional model)
    config.student = arg.student
    config.compare_grids = ["uniform", "quadratic", "logsnr"]
    config.lock()
    return config
