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
    # Align Your Steps, Stable Diffusion XL, 10 steps (the paper's published list, then 0 appended by its users).
    "ays_sdxl": {
        "space": "gamma",
        "values": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    },
    # Align Your Steps, Stable Video Diffusion, 10 steps (EDM-style sigmas up to 700).
    "ays_svd": {
        "space": "gamma",
        "values": [700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
    },
    # Optimal Stepsize Distillation (Pei et al. 2025), FLUX, 10 steps.
    "oss_flux": {
        "space": "flow",
        "values": [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001],
    },
})
