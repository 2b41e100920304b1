"""A study's data: resolve the root, cache decoded images (and frozen-trunk features), split.

``hpo_sources`` hands out train and validation only; ``final_sources`` is the one place that
reads the test classes, and only ``harness evaluate`` calls it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.data import get_dataset
from harness.data.base import ImageList
from harness.data.cache import load_image_cache
from harness.data.digests import content_key
from harness.data.splits import Split, make_split, write_manifest
from harness.errors import DataError
from harness.models import EmbeddingHead, TrunkInfo, create_trunk, feature_cache_path, trunk_features
from harness.models.activations import Activations, bottom_precision, build_activations, load_activations
from harness.models.activations import cache_stem as activation_stem
from harness.models.embedder import Embedder
from harness.models.partial import Bottom, Top, check_train_blocks
from harness.study.config import (
    PARAM_DEFAULTS,
    SHARED_COPIES,
    StudyConfig,
    check_carve_out,
    config_warnings,
    param_values,
)
from harness.study.guard import refuse_changed
from harness.training import ActivationSource, FeatureSource, ImageSource, Source, TrialParams

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("device: cuda requested but CUDA is not available; set device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_root(cfg: StudyConfig, allow_download: bool = False) -> Path:
    """data_root if set; else the shared copy if present; else download when the config allows it."""
    spec = get_dataset(cfg.dataset)
    if cfg.data_root:
        root = Path(cfg.data_root).expanduser()
        if root.exists() or not (allow_download and cfg.download):
            return root
        return spec.download(root)
    shared = SHARED_COPIES.get(cfg.dataset)
    # relative to the working directory (the repo root for Snakemake), then to this checkout
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if shared and (base / shared).exists():
            return base / shared
    target = cfg.results / "data" / cfg.dataset
    try:
        return spec.find_root(target)
    except DataError:
        pass
    if allow_download and cfg.download:
        log.info("no local copy of %s; downloading the official archive into %s", cfg.dataset, target)
        return spec.download(target)
    raise DataError(
        f"no copy of dataset {cfg.dataset!r} found: set data_root in the study config,"
        " or download: true to fetch the official archive"
    )


@dataclass
class Prepared:
    cfg: StudyConfig
    images: ImageList
    split: Split
    images_u8: np.ndarray
    features: np.ndarray | None
    trunk_info: TrunkInfo
    activations: dict[int, Activations] | None = None  # trunk: partial: per cut (train_blocks)


def prepare(
    cfg: StudyConfig, device: torch.device | None = None, allow_download: bool = False, write: bool = True
) -> Prepared:
    """Idempotent: the first call decodes and embeds, every later one memory-maps the caches.

    ``write=False`` leaves the stored split manifest alone (the evaluation compares against it).
    """
    if write:
        refuse_changed(cfg)  # before anything is written: a refused config changes nothing
    device = device or resolve_device(cfg.device)
    spec = get_dataset(cfg.dataset)
    root = resolve_root(cfg, allow_download)
    images = spec.load(root, strict_counts=cfg.strict_counts)
    split = make_split(images, spec.train_classes, spec.test_classes, cfg.val_fraction, cfg.seed)
    widest = max(param_values(cfg.search_space.get("batch_p", PARAM_DEFAULTS["batch_p"])))
    n_train = len(split.manifest["classes"]["train"]) + len(split.manifest["classes"]["val"])
    check_carve_out(n_train, cfg.val_fraction, int(widest), cfg.name)
    trunk, info = create_trunk(cfg.backbone, cfg.pretrained, cfg.checkpoint, seed=cfg.seed)
    cuts = partial_cuts(cfg)
    if cfg.trunk == "partial":
        check_train_blocks(trunk, cuts, cfg.backbone)  # by the trunk's class, before anything is written
    if write:
        refuse_changed(cfg, split.manifest)  # another copy of the data must not replace the manifest
        write_manifest(split, cfg.study_dir / "split_manifest.json")
        for w in config_warnings(cfg, split.manifest):
            log.warning("study %s: %s", cfg.name, w)
    key = content_key(images, cfg.cache_dir)  # names every cache below: a changed image never reuses one
    images_u8 = load_image_cache(images, key, cfg.cache_px, cfg.cache_dir)
    features = activations = None
    if cfg.trunk == "frozen":
        path = feature_cache_path(
            cfg.cache_dir, cfg.dataset, key, info, cfg.image_size, cfg.cache_px
        )
        features = trunk_features(trunk, info, images_u8, cfg.image_size, path, device)
    elif cfg.trunk == "partial":
        activations = partial_activations(cfg, images, key, spec, trunk, info, images_u8, cuts, device)
    return Prepared(cfg, images, split, images_u8, features, info, activations)


def partial_cuts(cfg: StudyConfig) -> list[int]:
    spec = cfg.search_space.get("train_blocks", PARAM_DEFAULTS["train_blocks"])
    if isinstance(spec, dict) and "low" in spec:
        return list(range(int(spec["low"]), int(spec["high"]) + 1, int(spec.get("step", 1))))
    return sorted({int(v) for v in param_values(spec)})


def partial_activations(
    cfg: StudyConfig,
    images: ImageList,
    key: str,
    spec: object,
    trunk: nn.Module,
    info: TrunkInfo,
    images_u8: np.ndarray,
    cuts: list[int],
    device: torch.device,
) -> dict[int, Activations]:
    """Every cut the search space reaches, cached (the missing ones computed in one pass)."""
    views, seed = int(cfg.partial["views"]), int(cfg.partial["seed"])
    aug_idx = np.flatnonzero(np.isin(images.labels, list(spec.train_classes)))  # type: ignore[attr-defined]
    precision = bottom_precision(device)
    stems = {
        k: activation_stem(
            cfg.cache_dir,
            cfg.dataset,
            key,
            info,
            cfg.image_size,
            cfg.cache_px,
            k,
            views,
            seed,
            aug_idx,
            precision,
            device.type,
        )
        for k in cuts
    }
    loaded = {k: load_activations(stems[k], k, len(images), views, aug_idx) for k in cuts}
    missing = {k: stems[k] for k, a in loaded.items() if a is None}
    if missing:
        log.info(
            "partial activations for cut(s) %s: %d images, %d views each", sorted(missing), len(images), views
        )
        build_activations(
            Bottom(trunk),
            info,
            images_u8,
            cfg.image_size,
            missing,
            views,
            seed,
            aug_idx,
            device,
            precision=precision,
        )
        loaded |= {k: load_activations(stems[k], k, len(images), views, aug_idx) for k in missing}
    out = {k: a for k, a in loaded.items() if a is not None}
    if len(out) != len(cuts):  # pragma: no cover - a cache that cannot be rebuilt
        raise DataError(f"the activation cache under {cfg.cache_dir / 'activations'} could not be built")
    return out


def _source(
    prep: Prepared, idx: np.ndarray, device: torch.device, seed: int, cut: int | None, train: bool = True
) -> Source:
    """``train=False``: a source only ever embedded (validation, test): its centre views alone."""
    labels = prep.images.labels
    if prep.features is not None:
        return FeatureSource(prep.features, labels, idx, device)
    if prep.activations is not None:
        acts = prep.activations[cut if cut is not None else min(prep.activations)]
        views = acts.views if train else None
        return ActivationSource(acts.centre, views, acts.view_rows, labels, idx, device, seed)
    info = prep.trunk_info
    return ImageSource(prep.images_u8, labels, idx, prep.cfg.image_size, info.mean, info.std, device, seed)


def hpo_sources(prep: Prepared, device: torch.device, cut: int | None = None) -> tuple[Source, Source]:
    """Train-minus-val and val classes: everything hyperparameter search may see (``cut``: the
    trial's train_blocks, for trunk: partial)."""
    train = _source(prep, prep.split.train, device, prep.cfg.seed, cut)
    return train, _source(prep, prep.split.val, device, 0, cut, train=False)


def final_sources(
    prep: Prepared, device: torch.device, seed: int, cut: int | None = None
) -> tuple[Source, Source]:
    """All train classes and the TEST classes: for the final evaluation of chosen configs only."""
    return _source(prep, prep.split.trainval, device, seed, cut), _source(
        prep, prep.split.test, device, 0, cut, train=False
    )


# Where a compiled step was MEASURED faster than eager (bench/results/, same run, same device):
# (device type, trunk) -> mode. ``compile: auto`` turns compile on only there. Empty: the last GPU
# measurement (a compiled trunk with the loss left eager, 0.68x) showed no win, and the whole-step
# compile has not yet run on a GPU; fill this from the device script's step table.
COMPILE_WINS: dict[tuple[str, str], str] = {}


def compile_mode(cfg: StudyConfig, device: torch.device) -> str:
    """The training step's mode (harness.training.step): eager, compiled, or graphs (CUDA graphs)."""
    if cfg.compile == "auto":
        return COMPILE_WINS.get((device.type, cfg.trunk), "eager")
    if cfg.compile == "graphs":
        return "graphs"
    return "compiled" if cfg.compile is True else "eager"


class TrunkPool:
    """One trunk module per worker, reset to its initial weights for every trial (a pretrained
    trunk is built and loaded once per worker, not once per trial)."""

    def __init__(self, cfg: StudyConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.trunk: nn.Module | None = None
        self.initial: dict[str, torch.Tensor] = {}

    def get(self) -> nn.Module:
        if self.trunk is None:
            # partial: the same network the cached bottom came from, also when it is a random init
            seed = self.cfg.seed if self.cfg.trunk == "partial" else None
            trunk, _ = create_trunk(self.cfg.backbone, self.cfg.pretrained, self.cfg.checkpoint, seed=seed)
            trunk = trunk.to(self.device)
            if self.device.type == "cuda":
                trunk = trunk.to(memory_format=torch.channels_last)
            self.initial = {k: v.detach().clone() for k, v in trunk.state_dict().items()}
            self.trunk = trunk
        elif self.trunk_is_random():
            # random init: each trial draws its own weights from its seeded RNG, as a fresh model would
            fresh, _ = create_trunk(self.cfg.backbone, False, None)
            self.trunk.load_state_dict(fresh.state_dict())
        else:
            self.trunk.load_state_dict(self.initial)
        return self.trunk

    def trunk_is_random(self) -> bool:
        """A random init drawn anew per trial (not for partial: its top continues the cached bottom)."""
        return not self.cfg.pretrained and not self.cfg.checkpoint and self.cfg.trunk != "partial"


def build_model(
    prep: Prepared, params: TrialParams, device: torch.device, pool: TrunkPool | None = None
) -> nn.Module:
    """The model for one trial: the head alone on frozen features, or trunk (fresh weights) + head."""
    cfg = prep.cfg
    head = EmbeddingHead(prep.trunk_info.num_features, params.embedding_dim).to(device)
    if cfg.trunk == "frozen":
        return head
    pool = pool or TrunkPool(cfg, device)
    if cfg.trunk == "partial":  # the trainable top, copied from the worker's (pretrained) trunk
        top = Top(pool.get(), params.train_blocks).to(device).to(memory_format=torch.channels_last)
        return Embedder(top, head, layout=torch.channels_last)  # 1.7x faster on CPU too (measured)
    return Embedder(pool.get(), head)
