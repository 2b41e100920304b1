"""Batched preprocessing from the uint8 cache, on whatever device the batch lives on.

Random-resized-crop + horizontal flip are one ``affine_grid``/``grid_sample`` call for the whole
batch, so no per-image Python work and no DataLoader workers are needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.errors import ConfigError


def normalize(
    x_u8: torch.Tensor, mean: tuple[float, ...] | torch.Tensor, std: tuple[float, ...] | torch.Tensor
) -> torch.Tensor:
    """NHWC uint8 -> NCHW float normalised. Pass mean/std as device tensors inside a training step:
    building them from tuples copies from the host, which waits for the device."""
    x = x_u8.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.as_tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ConfigError(f"cannot centre-crop {size}px from {h}x{w} images; set cache_size >= image_size")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_resized_crop_flip(
    x: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Per-sample random crop (area fraction ``scale``, aspect ``ratio``) resized to ``size``, 50 % flip."""
    n = x.shape[0]
    dev = x.device
    u = torch.rand(n, 5, generator=generator, device=generator.device if generator else dev).to(dev)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image
    sh = torch.sqrt(area / r).clamp(max=1.0)
    tx = (1 - sw) * (2 * u[:, 2] - 1)  # centre offset in [-1, 1] coordinates
    ty = (1 - sh) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = sw * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
