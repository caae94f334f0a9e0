"""The teacher every learned sampler is fitted to: the model, its process, and a fine solve on a teacher grid from
the calibration noise (`schedules.learn`'s methods share it), with the Gram matrix of its states and predictions on
which the least-squares and DP costs are computed without further model calls."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from fastsamplers import samplers
from fastsamplers.core.typing import ArrayLike, ModelFn, PyTree
from fastsamplers.models import predictions
from fastsamplers.schedules.optimal.distillation import TeacherGrid, _with_args, teacher_timesteps, teacher_trajectory
from fastsamplers.schedules.processes import Process


@dataclasses.dataclass(frozen=True)
class Teacher:
    """model_fn (x, t[, args]) -> `prediction`; num_steps and grid_spec the teacher grid (from t_max to t_min; a grid
    name or (name, options), `distillation.teacher_timesteps`); solver the teacher's (fine, fixed-step) solver."""

    model_fn: ModelFn
    process: Process
    prediction: str
    args: PyTree
    num_steps: int
    grid_spec: TeacherGrid
    solver: samplers.Solver
    t_min: float | None = None
    t_max: float | None = None

    def grid(self, num_steps: int | None = None) -> jax.Array:
        """The teacher grid (num_steps + 1,), by default of the teacher's own number of steps."""
        return teacher_timesteps(self.grid_spec, self.process, num_steps or self.num_steps, self.t_min, self.t_max)

    def model(self, native: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """(x, t) -> the model's `native` prediction (args bound)."""
        return predictions.converted(_with_args(self.model_fn, self.args), self.prediction, native, self.process)

    def states(self, x_init: ArrayLike, ts: ArrayLike) -> jax.Array:
        """The teacher's state at every point of ts: (len(ts), *x_init.shape)."""
        return teacher_trajectory(self.model_fn, self.process, x_init, ts, self.solver, self.prediction, self.args)

    def states_and_predictions(self, x_init: ArrayLike, ts: ArrayLike,
                               native: str) -> tuple[jax.Array, jax.Array, samplers.Solver]:
        """(states, the `native` prediction at each state, the teacher solver). The predictions are one compiled
        loop over the teacher's points, a batch at a time: a network's activations for every point at once would
        not fit in memory (200 points x 512 digits images are 100,000 images)."""
        trajectory = self.states(x_init, ts)
        model = self.model(native)
        preds = jax.jit(lambda xs, t: jax.lax.map(lambda a: model(*a), (xs, t)))(trajectory, ts)
        return trajectory, preds, self.solver

    def model_calls(self, num_steps: int) -> int:
        """Model calls of a teacher solve of num_steps steps, per sample."""
        return self.solver.nfe(num_steps)


def gram_matrix(*stacks: np.ndarray | jax.Array) -> np.ndarray:
    """G[u, v] = mean over the batch and elements of V_u V_v, V the vectors of the stacks (each (K, *shape))
    concatenated; float64 on the host."""
    v = np.concatenate([np.asarray(s, np.float64).reshape(s.shape[0], -1) for s in stacks], axis=0)
    return v @ v.T / v.shape[1]
