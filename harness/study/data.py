"""A study's data: resolve the root, cache decoded images, split, and the trunk mode's own caches.

``hpo_sources`` hands out train and validation only; ``final_sources`` is the one place that
reads the test classes, and only ``harness evaluate`` calls it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import torch
from torch import nn

from harness.data.cache import load_image_cache
from harness.data.digests import content
from harness.data.splits import dataset_classes, make_split, split_by_roles, write_manifest
from harness.errors import DataError
from harness.models import create_trunk
from harness.models.weights import resolve
from harness.params import TrialParams
from harness.study.arms import arm_configs
from harness.study.config import StudyConfig, check_batch, check_split, config_warnings
from harness.study.guard import refuse_changed, store_content, store_weights
from harness.study.trunks import Prepared, TrunkPool, get_trunk
from harness.training import Source

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("device: cuda requested but CUDA is not available; set device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_root(cfg: StudyConfig, allow_download: bool = False) -> Path:
    """data_root if set; else the dataset's shared copy if present; else download when allowed."""
    spec = cfg.dataset_spec()
    if cfg.data_root:
        root = Path(cfg.data_root).expanduser()
        if root.exists() or not (allow_download and cfg.download):
            return root
        return spec.download(root)
    shared = spec.shared_copy
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
    if not spec.archives:
        raise DataError(f"dataset {cfg.dataset!r} needs data_root: set it to {spec.root_hint}")
    raise DataError(
        f"no copy of dataset {cfg.dataset!r} found: set data_root in the study config,"
        " or download: true to fetch the official archive"
    )


def prepare(
    cfg: StudyConfig, device: torch.device | None = None, allow_download: bool = False, write: bool = True
) -> Prepared:
    """Idempotent: the first call decodes and embeds, every later one memory-maps the caches.

    ``write=False`` leaves the stored split manifest alone (the evaluation compares against it).
    """
    if write:
        refuse_changed(cfg)  # before anything is written: a refused config changes nothing
    device = device or resolve_device(cfg.device)
    spec = cfg.dataset_spec()
    images = spec.load(resolve_root(cfg, allow_download), strict_counts=cfg.strict_counts)
    classes = dataset_classes(spec, images, cfg.test_fraction, cfg.split_seed)
    if classes.disjoint:
        split = make_split(
            images,
            classes.train,
            classes.test,
            cfg.val_fraction,
            cfg.seed,
            cfg.val_folds,
            classes.validation,
            classes.how,
        )
    else:  # class_disjoint: false: each image stays in the split its row gives
        split = split_by_roles(images, cfg.val_fraction, cfg.seed, cfg.val_folds, classes.how)
    if split.manifest.get("validation") == "given":  # the data's validation: no carve-out to size
        check_batch(cfg, len(split.manifest["classes"]["train"]), cfg.name)
    elif not cfg.strict_counts or spec.train_classes is None:  # class count known only now
        n_train = len(split.manifest["classes"]["train"]) + len(split.manifest["classes"]["val"])
        check_split(cfg, n_train, cfg.name)
    mode = get_trunk(cfg)
    trunk, info = create_trunk(cfg.backbone, cfg.pretrained, cfg.checkpoint, seed=cfg.seed)
    mode.check(trunk)  # against the built backbone, before anything is written
    weights = info.source.record() if info.source is not None else None
    refuse_changed(cfg, weights=weights)  # the search's weights, not a file updated under its tag
    arms = arm_weights(cfg)  # a comparison's: each arm's, refused alike (compare: backbone: its own)
    if info.source is not None and info.source.sha256:
        log.info("%s: weights %s (sha256 %s)", cfg.backbone, info.source.origin, info.source.sha256[:12])
    # the copy's bytes: they name every cache (a changed image never reuses one), and a study whose
    # images changed since its search is refused
    held = content(images, cfg.cache_dir)
    refuse_changed(cfg, content=held)  # before any cache is built from changed bytes
    if write:
        refuse_changed(cfg, split.manifest, held)  # another copy of the data must not replace the manifest
        write_manifest(split, cfg.manifest_path)
        store_content(cfg, held)
        if weights is not None:
            store_weights(cfg, weights)
        for arm, record in arms:
            store_weights(arm, record)
        for w in config_warnings(cfg, split.manifest):
            log.warning("study %s: %s", cfg.name, w)
    images_u8 = load_image_cache(images, held.key, cfg.cache_px, cfg.cache_dir)
    inputs = mode.prepare(images, held.key, images_u8, trunk, info, device)
    return Prepared(cfg, mode, images, split, images_u8, info, inputs, held)


def arm_weights(cfg: StudyConfig) -> list[tuple[StudyConfig, dict]]:
    """A comparison's arms with the weights record of each one's backbone (fetched when the hub is
    on), each refused when its arm was searched with other weights; none for any other study."""
    if cfg.compare is None or cfg.parent is not None:
        return []
    out = []
    for arm in arm_configs(cfg):
        record = resolve(arm.backbone, arm.pretrained, arm.checkpoint, fetch=True, seed=arm.seed).record()
        refuse_changed(arm, weights=record)
        out.append((arm, record))
    return out


def hpo_sources(
    prep: Prepared, device: torch.device, cut: int | None = None, fold: int = 0
) -> tuple[Source, Source]:
    """Train-minus-val and val classes of validation fold ``fold``: everything hyperparameter search
    may see (``cut``: the mode's resident input a trial uses, e.g. its train_blocks for trunk: partial)."""
    mode = prep.mode
    train_idx, val_idx = prep.split.fold(fold)
    train = mode.source(prep, train_idx, device, prep.cfg.seed, cut, train=True)
    return train, mode.source(prep, val_idx, device, 0, cut, train=False)


def final_sources(
    prep: Prepared, device: torch.device, seed: int, cut: int | None = None
) -> tuple[Source, Source]:
    """All train classes and the TEST classes: for the final evaluation of chosen configs only."""
    mode, split = prep.mode, prep.split
    return mode.source(prep, split.trainval, device, seed, cut, train=True), mode.source(
        prep, split.test, device, 0, cut, train=False
    )


K = TypeVar("K")
V = TypeVar("V")


class Resident(Generic[K, V]):
    """One value resident at a time, rebuilt when another key is asked for (one cut's sources: a
    deep cut's activations with their views can fill a GPU). The old value is freed first."""

    def __init__(self, load: Callable[[K], V]) -> None:
        self.load = load
        self.key: K | None = None
        self.value: V | None = None

    def get(self, key: K) -> V:
        if self.value is None or key != self.key:
            self.value = None
            self.key, self.value = key, self.load(key)
        return self.value


def compile_mode(cfg: StudyConfig, device: torch.device) -> str:
    """The training step's mode (harness.training.step): eager, compiled, or graphs (CUDA graphs)."""
    if cfg.compile == "auto":
        return get_trunk(cfg).compile_wins.get(device.type, "eager")
    if cfg.compile == "graphs":
        return "graphs"
    return "compiled" if cfg.compile is True else "eager"


def build_model(
    prep: Prepared, params: TrialParams, device: torch.device, pool: TrunkPool | None = None
) -> nn.Module:
    """The model one trial trains (the trunk mode decides what: a head alone, a top, or trunk + head)."""
    return prep.mode.model(prep, params, device, pool or prep.mode.pool(device))


__all__ = ["Prepared", "build_model", "final_sources", "hpo_sources", "prepare", "resolve_device"]
