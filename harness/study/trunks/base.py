"""The base of the trunk modes: how a study's backbone takes part in a trial.

A trunk mode is one registered subclass (``@TRUNKS.register("frozen")``) in its own module. It owns
what differs between the modes, and nothing else branches on the mode's name:

- ``prepare``: its caches, built once per worker from the decoded images, under keys that hold
  everything their numbers depend on;
- ``source``: the inputs of a trial (cached features, cached activations, or augmented images);
- ``model``: the module a trial trains;
- ``baseline``: the test embeddings of the backbone without triplet training, the bar to beat;
- ``check``: what can only be checked against the built backbone (its stages);
- which hyperparameters apply to it: the rows of ``harness.params`` that name it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from harness.data.base import ImageList
from harness.data.digests import Content
from harness.data.splits import Split
from harness.models import EmbeddingHead, TrunkInfo, create_trunk
from harness.params import TABLE, HyperParam, TrialParams
from harness.training import Source

if TYPE_CHECKING:
    from harness.study.config import StudyConfig


@dataclass
class Prepared:
    """Everything a worker or the evaluation needs of a study's data, built once by ``prepare``."""

    cfg: StudyConfig
    mode: TrunkMode
    images: ImageList
    split: Split
    images_u8: np.ndarray
    trunk_info: TrunkInfo
    inputs: Any = None  # the mode's own cache: features, activations per cut, or nothing
    content: Content | None = None  # the copy's content key and file digests


class TrunkMode(ABC):
    # (device type) -> step mode measured faster than eager for this trunk mode (bench/results/,
    # same run, same device); ``compile: auto`` uses it. Empty: no win measured yet.
    compile_wins: ClassVar[dict[str, str]] = {}
    seeded: ClassVar[bool] = False  # a random-init trunk is one network drawn from the study's seed

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg

    def pool(self, device: torch.device) -> TrunkPool:
        """The worker's one trunk for all its trials."""
        return TrunkPool(self.cfg, device, seeded=self.seeded)

    def params(self) -> list[HyperParam]:
        """The hyperparameters that apply to this mode."""
        return [p for p in TABLE.values() if p.applies(self.cfg.trunk)]

    def reference_defaults(self, values: dict[str, Any]) -> dict[str, Any]:
        """The evaluation's reference recipe (``values``: the defaults, the fixed values and the
        reference margin) as this mode can run it."""
        return values

    def check(self, trunk: nn.Module) -> None:
        """Checks against the built backbone, before anything is written (none by default)."""

    def cut(self, params: TrialParams | None) -> int | None:
        """Which of the mode's resident inputs a trial uses (None: the one there is)."""
        return None

    @abstractmethod
    def prepare(
        self,
        images: ImageList,
        key: str,
        images_u8: np.ndarray,
        trunk: nn.Module,
        info: TrunkInfo,
        device: torch.device,
    ) -> Any:
        """Build or open the mode's caches (``key``: the dataset copy's content key)."""

    @abstractmethod
    def source(
        self, prep: Prepared, idx: np.ndarray, device: torch.device, seed: int, cut: int | None, train: bool
    ) -> Source:
        """The inputs of the images ``idx`` (``train=False``: only ever embedded)."""

    @abstractmethod
    def model(self, prep: Prepared, params: TrialParams, device: torch.device, pool: TrunkPool) -> nn.Module:
        """The module one trial trains."""

    @abstractmethod
    def image_model(
        self, prep: Prepared, trained: nn.Module, params: TrialParams, device: torch.device, pool: TrunkPool
    ) -> nn.Module:
        """The whole embedding model, normalised images -> embeddings, around ``trained`` (what
        ``model`` built and training changed): what is exported."""

    @abstractmethod
    def baseline(self, prep: Prepared, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        """Embeddings of the images ``idx`` by the backbone alone (no triplet training)."""

    def head(self, prep: Prepared, params: TrialParams, device: torch.device) -> EmbeddingHead:
        return EmbeddingHead(prep.trunk_info.num_features, params.embedding_dim).to(device)


class TrunkPool:
    """One trunk module per worker, reset to its initial weights for every trial (a pretrained
    trunk is built and loaded once per worker, not once per trial). ``seeded``: a random init is
    drawn from the study's seed, the same network in every process (partial: the cached bottom's)."""

    def __init__(self, cfg: StudyConfig, device: torch.device, seeded: bool = False) -> None:
        self.cfg, self.device, self.seeded = cfg, device, seeded
        self.trunk: nn.Module | None = None
        self.initial: dict[str, torch.Tensor] = {}

    def get(self) -> nn.Module:
        cfg = self.cfg
        if self.trunk is None:
            seed = cfg.seed if self.seeded else None
            trunk, _ = create_trunk(cfg.backbone, cfg.pretrained, cfg.checkpoint, seed=seed)
            trunk = trunk.to(self.device)
            if self.device.type == "cuda":
                trunk = trunk.to(memory_format=torch.channels_last)
            self.initial = {k: v.detach().clone() for k, v in trunk.state_dict().items()}
            self.trunk = trunk
        elif self.random():
            # random init: each trial draws its own weights from its seeded RNG, as a fresh model would
            fresh, _ = create_trunk(cfg.backbone, False, None)
            self.trunk.load_state_dict(fresh.state_dict())
        else:
            self.trunk.load_state_dict(self.initial)
        return self.trunk

    def random(self) -> bool:
        """A random init drawn anew per trial (not when seeded: then it is one fixed network)."""
        return not self.cfg.pretrained and not self.cfg.checkpoint and not self.seeded
