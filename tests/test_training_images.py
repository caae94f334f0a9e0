"""The image configs' smoke variants train, evaluate and sample end to end; every digits_vp variant builds. (The
training loop itself, resumption and failures: test_training.py.)"""

import os

import numpy as np
import pytest

from fastsamplers.experiments import train
from fastsamplers.experiments.configs import digits_dit, digits_fm, digits_vp


# In the slow set (15-30 s each on 2 cores): the default suite trains, samples and resumes the conditional digits_vp
# UNet end to end (tests/test_training.py), flow matching on the toy config, and checks the DiT's network and the OT
# coupling on their own (tests/test_networks.py, tests/test_couplings.py).
@pytest.mark.slow
@pytest.mark.parametrize("module,arg", [(digits_fm, "smoke,coupling=ot"), (digits_dit, "smoke"),
                                        (digits_fm, "conditional,smoke")])
def test_image_configs_smoke(module, arg, tmp_path):
    config = module.get_config(arg)
    result = train.train(config, str(tmp_path))
    assert result["step"] == config.train.num_steps and np.isfinite(result["eval_loss"])
    sizes = sorted(result["resolutions"], key=int)
    assert sizes == [str(s) for s in config.data.image_sizes]
    for size in sizes:
        assert np.isfinite(result["resolutions"][size]["w2"])
    assert len(os.listdir(tmp_path / "samples")) == len(sizes)


@pytest.mark.parametrize("arg", ["smoke", "smoke,prediction=v,process=vp_cosine", "smoke,process=edm,prediction=x0",
                                 "smoke,size=16", ""])
def test_vp_configs_build(arg):
    # Everything the config names is built and checked (the loss targets are tested in test_losses.py).
    experiment = train.build(digits_vp.get_config(arg))
    assert experiment.datasets[0].shape[-1] == 1 and experiment.ts[0] > experiment.ts[-1]
