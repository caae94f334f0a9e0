"""The training library: the loop (`train`), the experiment a config builds (`build`), checkpoints and restoring a
run (`restore_run`, `checkpoint_target`, `load_config`), the losses, the minibatch couplings, the datasets, and BOSS
straightening of a trained flow (`straighten`: its teacher, Bellman steps and trajectory pool).

It may import `core`, `schedules`, `models`, `samplers` and, within experiments, `experiments.report` (sample
figures) and `experiments.metrics.transport` (the W2 of the final evaluation); never `experiments.runs`.
"""

from fastsamplers.experiments.train.checkpoints import SamplerModel, Target, checkpoint_target, load_config, restore_run
from fastsamplers.experiments.train.couplings import COUPLINGS, get_coupling
from fastsamplers.experiments.train.data import DATASETS, get_dataset
from fastsamplers.experiments.train.experiment import Experiment, build, init_state, make_train_chunk
from fastsamplers.experiments.train.loop import train

__all__ = ["COUPLINGS", "DATASETS", "Experiment", "SamplerModel", "Target", "build", "checkpoint_target", "get_coupling",
           "get_dataset", "init_state", "load_config", "make_train_chunk", "restore_run", "train"]
