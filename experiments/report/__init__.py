"""Reports: text tables (`render_table`, the one renderer of every table the project prints or saves, and the
sampler-by-schedule tables of evaluation rows), figures of samples, and the provenance recorded beside results.

It imports no other part of experiments and none of the numerical packages (schedules, samplers, models); any layer
above `core` may use it, `experiments.runs` and `scripts` most of all.
"""

from fastsamplers.experiments.report.figures import image_grid, save_samples
from fastsamplers.experiments.report.provenance import versions
from fastsamplers.experiments.report.tables import markdown, plot, render_table

__all__ = ["image_grid", "markdown", "plot", "render_table", "save_samples", "versions"]
