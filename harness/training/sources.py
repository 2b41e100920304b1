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


class _Seeded:
    """A source that draws its randomness (crops, flips, a cached view) from its own generator on
    the device, reseeded per trial."""

    def _init_seeded(self, labels: np.ndarray, idx: np.ndarray, device: torch.device, seed: int) -> None:
        self.labels = torch.from_numpy(labels[idx]).to(device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)


class ImageSource(_Seeded):
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
        self._init_seeded(labels, idx, device, seed)
        self.x = torch.from_numpy(np.ascontiguousarray(images_u8[idx])).to(device)
        self.size = size
        self.mean = torch.tensor(mean, device=device)  # built once: no host copy inside the step
        self.std = torch.tensor(std, device=device)

    def batch(self, i: torch.Tensor, train: bool) -> torch.Tensor:
        x = normalize(self.x[i], self.mean, self.std)
        if train:
            return random_resized_crop_flip(x, self.size, self.generator)
        return center_crop(x, self.size)


class ActivationSource(_Seeded):
    """Partial fine-tuning: the frozen bottom's cached activations (fp16, resident on the device).

    A training batch takes, per image, one of its ``V`` cached augmented views at random (from the
    trial's seeded generator); evaluation and the offline mining pass take the centre view."""

    def __init__(
        self,
        centre: np.ndarray,
        views: np.ndarray | None,
        view_rows: np.ndarray | None,
        labels: np.ndarray,
        idx: np.ndarray,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.centre = torch.from_numpy(np.ascontiguousarray(centre[idx])).to(device)
        self.views = None
        if views is not None and view_rows is not None and len(idx) and (view_rows[idx] >= 0).all():
            self.views = torch.from_numpy(np.ascontiguousarray(views[view_rows[idx]])).to(device)
        self._init_seeded(labels, idx, device, seed)

    def batch(self, i: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.views is not None:
            v = torch.randint(self.views.shape[1], (len(i),), generator=self.generator, device=i.device)
            return self.views[i, v].float()
        return self.centre[i].float()


Source = FeatureSource | ImageSource | ActivationSource
