"""score_sde's PyTorch checkpoints (github.com/yang-song/score_sde_pytorch, `checkpoint_N.pth`), once converted.

A `.pth` is a pickle; the loader never opens one. `scripts/convert_checkpoint.py SOURCE OUT --layout
score_sde_pytorch --config NAME` (torch only) turns it into a folder of
  config.json        {"layout": "score_sde_pytorch", "config": <a `score_sde.PRESETS` name, or score_sde config keys>}
  model.safetensors  the EMA weights (what score_sde_pytorch samples with, `ema.copy_to`) under the network's
                     state-dict names without DataParallel's `module.`, plus the Fourier `W` (not trained, so not in
                     the EMA list); `--params model` writes the raw weights instead.

The PyTorch NCSNpp (models/ncsnpp.py) is score_sde's flax NCSNpp module for module, so it is the same `UNet2D` of
the same two families, with the same process, prediction and time input (`models.pretrained.score_sde`, whose
config handling is used as is). Only the names differ: the PyTorch network keeps its modules in one list,
`all_modules.N`, appended in the order NCSNpp.__init__ builds them (ncsnpp.py:92-252), which is the order the flax
`__call__` creates them in, so module N is entry N of `score_sde.module_map` (checked on score_sde_pytorch's own
network by scripts/make_score_sde_pytorch_fixtures.py). Inside a module the names are the flax ones (GroupNorm_0,
Conv_0, Dense_0, NIN_0, ...). Arrays: conv weights OIHW -> HWIO, nn.Linear weights (out, in) -> (in, out); NIN's `W`
is stored (in, out) (layers.py:549, applied by contract_inner over the channel axis) and GroupNorm's weight is the
scale, so neither is transposed.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from fastsamplers.core.typing import Shape
from fastsamplers.models.pretrained import score_sde
from fastsamplers.models.pretrained.diffusers import PICKLED, ParamPath, to_flax, torch_shape, unflatten
from fastsamplers.models.pretrained.model import Pretrained, check_weights, read_converted_config
from fastsamplers.models.pretrained.unet2d import UNet2DConfig

LAYOUT = "score_sde_pytorch"
CONFIG, WEIGHTS = "config.json", "model.safetensors"
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "W": "W", "b": "b"}  # flax leaf -> torch leaf


def parameter_map(config: UNet2DConfig, expected: dict[ParamPath, Shape]) -> dict[str, ParamPath]:
    """{score_sde_pytorch state-dict name "all_modules.N.Sub.leaf": UNet2D parameter path} for `expected_params`.

    score_sde's flax name "Kind_k/Sub/leaf" of the same parameter (`score_sde.parameter_map`) gives the module
    (entry N of `score_sde.module_map`, keyed by its first part: a Combine's entry is "Combine_k/Conv_0") and the
    inner names; the leaf becomes torch's (kernel / scale -> weight)."""
    index = {theirs.split("/")[0]: n for n, (theirs, _) in enumerate(score_sde.module_map(config))}
    out = {}
    for name, path in score_sde.parameter_map(config, expected).items():
        module, *inner, leaf = name.split("/")
        out[".".join(["all_modules", str(index[module]), *inner, _LEAVES[leaf]])] = path
    return out


def _stored_as_is(name: str) -> bool:
    """NIN's W (in, out) and the Fourier W (nf,) are stored in flax's layout; everything else is torch's."""
    return name.endswith(".W")


def find_files(path: str) -> tuple[str, str]:
    """(config.json, model.safetensors) of a converted folder; a sentence naming the converter otherwise."""
    if os.path.isfile(path) and path.endswith(PICKLED):
        raise ValueError(f"{path}: a pickled PyTorch file, which this project never unpickles. Convert it once with "
                         f"scripts/convert_checkpoint.py (torch only, torch.load(weights_only=True)), e.g. `python "
                         f"scripts/convert_checkpoint.py {path} OUT_FOLDER --layout {LAYOUT} --config "
                         "vp/cifar10_ddpmpp_deep_continuous`, and load OUT_FOLDER")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a converted {LAYOUT} folder ({CONFIG} and {WEIGHTS}, written by "
                                "scripts/convert_checkpoint.py)")
    files = os.path.join(path, CONFIG), os.path.join(path, WEIGHTS)
    for file in files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{path}: missing {os.path.basename(file)}; a converted {LAYOUT} folder has "
                                    f"{CONFIG} and {WEIGHTS} (written by scripts/convert_checkpoint.py)")
    return files


def load(path: str, **overrides: Any) -> Pretrained:
    """A converted score_sde_pytorch checkpoint as a `Pretrained`.

    Args:
      path: the folder scripts/convert_checkpoint.py wrote (config.json, model.safetensors).
      **overrides: score_sde config keys (image_size=..., continuous=..., ...), applied after config.json's.

    Returns:
      A `Pretrained` with the process, prediction and time input of `models.pretrained.score_sde` for its family.

    Raises:
      FileNotFoundError, ValueError, NotImplementedError: before any compute, naming the file and the key.
    """
    from safetensors.numpy import load_file

    config_file, weights_file = find_files(path)
    raw = read_converted_config(path, LAYOUT, "convert the .pth with scripts/convert_checkpoint.py --layout "
                                f"{LAYOUT}")[0]
    if not isinstance(raw.get("config"), (str, dict)):
        raise ValueError(f"{config_file}: expected {{\"layout\": \"{LAYOUT}\", \"config\": <a score_sde preset name "
                         f"or config keys>}} as scripts/convert_checkpoint.py writes it, got "
                         f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
    config = raw["config"]
    cfg = score_sde.resolve_config(config, source=config_file, **overrides)
    unet, _, expected = score_sde.network(cfg)
    mapping = parameter_map(unet, expected)
    state = load_file(weights_file)
    check_weights({k: v.shape for k, v in state.items()},
                  {k: p_shape if _stored_as_is(k) else torch_shape(p, p_shape)
                   for k, p in mapping.items() for p_shape in (expected[p],)},
                  weights_file, f"score_sde {cfg['_source']}")
    params = unflatten({mapping[k]: jnp.asarray(np.asarray(v, np.float32)) if _stored_as_is(k)
                        else to_flax(mapping[k], v) for k, v in state.items()})
    return score_sde.make_pretrained(cfg, unet, params, path, LAYOUT)

