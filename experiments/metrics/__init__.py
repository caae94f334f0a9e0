"""Evaluation metrics on samples: Fréchet distances (FID with the Inception network, FD-digits with a small digits
classifier), the exact empirical W2, the energy distance and straightness of flows, and model FLOPs counted from the jaxpr.

The Fréchet distances are one layer that every runner scores through: `features` (the feature networks by name, the
uint8 quantisation, samples streamed into statistics), `references` (the reference files and their statistics),
`frechet` (`FeatureStats`, the NaN policy, the distance). The FD-digits classifier is `digits_classifier`, its
training `digits_training`, its scoring `fd_digits`; the FID network is `inception`.

It may import `core`, `schedules`, `models`, `samplers` and, within experiments, `experiments.train.data` (the
digits FD-digits is trained and scored on); never `experiments.runs`.
"""

# Not the function `fd_digits.fd_digits` itself: its name is its module's, which `from experiments.metrics import
# fd_digits` must give.
from fastsamplers.experiments.metrics.fd_digits import score_samples
from fastsamplers.experiments.metrics.flops import count_flops
from fastsamplers.experiments.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_extrapolated
from fastsamplers.experiments.metrics.transport import energy_distance, straightness, w2_exact

__all__ = ["FeatureStats", "count_flops", "energy_distance", "frechet_distance", "frechet_distance_extrapolated",
           "score_samples", "straightness", "w2_exact"]
