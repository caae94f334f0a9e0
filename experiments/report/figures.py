"""Pictures of samples: a tiled grid for images, a scatter plot for 2-D points."""

from __future__ import annotations

import math
import os

import numpy as np


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """(n, H, W, C) images in [-1, 1] tiled into one uint8 array (rows * H, columns * W, C), 1-pixel gaps.

    Args:
      images: (n, H, W, C) floats in [-1, 1] (NaN drawn as 0).
      columns: images per row; default about sqrt(n).

    Returns:
      The uint8 grid, white between the images.

    Example:
        >>> image_grid(np.zeros((6, 4, 4, 1)), columns=3).shape
        (9, 14, 1)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (n, H, W, C), got {images.shape}")
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, c), 255, np.uint8)
    pixels = np.round((np.clip(np.nan_to_num(images), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    for i in range(n):
        r, k = divmod(i, columns)
        grid[r * (h + 1): r * (h + 1) + h, k * (w + 1): k * (w + 1) + w] = pixels[i]
    return grid


def save_samples(x: np.ndarray, path: str, title: str | None = None, scale: int = 4) -> str:
    """Save samples as a PNG: a grid for (n, H, W, C) images (each pixel `scale`x enlarged), a scatter plot for
    (n, 2) points.

    Args:
      x: (n, H, W, C) images in [-1, 1] or (n, 2) points.
      path: the PNG to write (its folder is created).
      title: the scatter plot's title (images have none).
      scale: the enlargement of each image pixel.

    Returns:
      The path.
    """
    x = np.asarray(x)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if x.ndim == 4:
        from PIL import Image

        grid = image_grid(x)
        image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
        image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    elif x.ndim == 2 and x.shape[1] == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6)
        ax.set_aspect("equal")
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    else:
        raise ValueError(f"can draw (n, H, W, C) images or (n, 2) points, got samples of shape {x.shape}")
    return path
