"""Where a trial's inputs come from: cached trunk features (frozen) or the uint8 image cache."""

from __future__ import annotations

import numpy as np
import torch

from harness.data.transforms import center_crop, normalize, random_resized_crop_flip


class FeatureSource:
    """Frozen trunk: inputs are precomputed trunk features, resident on the device."""

    def __init__(
        self, features: np.ndarray, labels: np.ndarray, idx: np.ndarray, device: torch.device
    ) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(features[idx], dtype=np.float32)).to(device)
        self.labels = torch.from_numpy(labels[idx]).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, i: torch.Tensor, train: bool) -> torch.Tensor:
        return self.x[i]

    def reseed(self, seed: int) -> None:
        """No randomness here (features are fixed); present so every source can be reseeded."""


class ImageSource:
    """Fine-tuning: uint8 images resident on the device, augmented in batch there."""

    def __init__(
        self,
        images_u8: np.ndarray,
        labels: np.ndarray,
        idx: np.ndarray,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(images_u8[idx])).to(device)
        self.labels = torch.from_numpy(labels[idx]).to(device)
        self.size = size
        self.mean = torch.tensor(mean, device=device)  # built once: no host copy inside the step
        self.std = torch.tensor(std, device=device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def batch(self, i: torch.Tensor, train: bool) -> torch.Tensor:
        x = normalize(self.x[i], self.mean, self.std)
        if train:
            return random_resized_crop_flip(x, self.size, self.generator)
        return center_crop(x, self.size)


Source = FeatureSource | ImageSource
