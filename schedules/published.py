"""Published step schedules, as printed in their papers, with the space their numbers live in.

space "gamma": noise levels sigma/alpha (EDM / k-diffusion sigmas); space "flow": rectified-flow sigmas (= t on the
`ot` process). Other step counts come from log-linear interpolation (`grids.interpolate_log_linear`).
"""

from fastsamplers.core import Registry

LISTS = Registry("published schedule", {
    # Align Your Steps (Sabour et al. 2024), Stable Diffusion 1.5, 10 steps.
    "ays_sd15": {
        "space": "gamma",
        "values": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    },
    # Optimal Stepsize Distillation (Pei et al. 2025), FLUX, 10 steps.
    "oss_flux": {
        "space": "flow",
        "values": [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001],
    },
})
