"""Final evaluation: the chosen configs, re-trained with k seeds on all train classes, on TEST classes.

This is the only code that reads the test split. The configs are the top-N distinct trials by
validation Recall@1 (each trained for the epoch count at which it peaked on validation) and a
fixed reference set chosen without looking at any result: the default margin (0.2) with each
mining strategy of the search space, every other parameter at its default. Every config is trained
with the same k seeds (default 3), so configs can be compared paired by seed.

The work is cut into units, one per (config, seed) plus the no-training baseline. Each unit writes
``evaluation/<unit>.json`` (+ ``.npz``, its per-query scores) with the identity of what it ran
(study uid, split, params, epochs, seed), so units run as parallel jobs (``evaluate_unit``, one
Snakemake job each) and a rerun after Ctrl-C redoes only the missing ones. ``evaluate_study``
runs what is missing and gathers everything under results/{study}/:

- ``test_runs.csv``: one row per (config, seed);
- ``test.csv``: one row per config: mean and 95 % interval of each metric (t over seeds; with one
  seed, a bootstrap over test queries), the no-training baseline first;
- ``comparisons.csv``: the best config minus each reference and minus the baseline, with a 95 %
  interval and p-value: paired t over seeds (against the one deterministic baseline run, a
  one-sample t over the seeds' differences); with one seed, a paired bootstrap over test queries;
- ``test_queries.npz``: per-query R@1 and AP@R of every run, for re-analysis.

Every file carries the ``study_uid`` of the study incarnation it belongs to.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState

from harness.data.splits import check_manifest
from harness.data.transforms import center_crop
from harness.errors import ConfigError, HarnessError
from harness.evaluation import retrieval_metrics
from harness.evaluation.stats import Interval, bootstrap_interval, paired_bootstrap, paired_t, t_interval
from harness.models import create_trunk, embed_images
from harness.models.export import ONNX, export_model
from harness.models.weights import WEIGHTS_COLUMNS, weights_columns, weights_params
from harness.params import TrialParams, defaults
from harness.progress import Progress, duration
from harness.study.config import Evaluate, StudyConfig
from harness.study.data import (
    Prepared,
    Resident,
    build_model,
    compile_mode,
    final_sources,
    prepare,
    resolve_device,
)
from harness.study.identity import check_writable, load_study, parent_run, study_uid, tracker_for
from harness.study.sampler import draws
from harness.study.trunks import TrunkPool, get_trunk
from harness.training import Source, evaluate_source, train

log = logging.getLogger(__name__)
progress_log = logging.getLogger("harness.progress")
BASELINE = "baseline (no triplet training)"
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")
PER_QUERY = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision")
COMPARED = ("recall@1", "map@r")


@dataclass(frozen=True)
class Unit:
    """One evaluation run: a config trained with one seed and scored on the test classes."""

    key: str  # its place in the plan (shards split these): baseline, top2-s1, ref-semihard-s0
    label: str  # the config's name in the tables: "trial 16", "reference semihard m=0.2", BASELINE
    kind: str  # baseline | top | reference
    rank: int
    trial: int  # the Optuna trial number (MLflow run, trials/<n>/); -1: no trial
    draw: int  # its draw index: the same config's name in an interrupted and an uninterrupted study
    val_r1: float
    params: TrialParams | None  # None: the baseline
    epochs: int
    seed: int
    backbone: str | None = None  # a zero-shot row's backbone (None: the study's own)

    def identity(self, uid: str, split: str) -> dict[str, Any]:
        """What a stored result must match to be reused."""
        out = {
            "uid": uid,
            "split": split,
            "label": self.label,
            "params": None if self.params is None else asdict(self.params),
            "epochs": self.epochs,
            "seed": self.seed,
        }
        return out if self.backbone is None else out | {"backbone": self.backbone}


ZERO_SHOT = "zero-"  # a zero-shot unit's key: zero-<backbone>


def registers(cfg: StudyConfig, unit: Unit) -> bool:
    """The run whose model goes into MLflow's registry: the best validation config, first seed."""
    return unit.kind == "top" and unit.rank == 1 and unit.seed == cfg.evaluate.seed_list[0]


def zero_shot_label(cfg: StudyConfig, backbone: str) -> str:
    """The row of ``backbone`` scored without training: the study's own is its baseline."""
    return BASELINE if backbone == cfg.backbone else f"{backbone} (no training)"


def zero_shot_backbones(cfg: StudyConfig) -> list[str]:
    """Backbones scored without training beside the study's own baseline: every other arm's of a
    comparison of backbones, then ``baselines``."""
    listed = [*cfg.backbones, *cfg.baselines] if cfg.compare is not None else list(cfg.baselines)
    return [b for b in dict.fromkeys(listed) if b != cfg.backbone]


def baseline_units(cfg: StudyConfig) -> list[str]:
    """The runs that train nothing: the baseline and each zero-shot backbone (none in an arm)."""
    return [] if cfg.parent else ["baseline", *(ZERO_SHOT + b for b in zero_shot_backbones(cfg))]


def evaluation_units(cfg: StudyConfig) -> list[str]:
    """Every run of a study's final evaluation, from its config alone: ``baseline``, then per seed
    ``top{rank}-s{seed}`` and ``ref-{mining}-s{seed}``. A rank beyond the distinct complete trials
    is skipped when the evaluation runs."""
    keys = baseline_units(cfg)
    if cfg.compare is not None:
        return keys
    minings = cfg.search_space.values("mining")
    for seed in cfg.evaluate.seed_list:
        keys += [f"top{r}-s{seed}" for r in range(1, cfg.evaluate.top_n + 1)]
        if cfg.evaluate.references:
            keys += [f"ref-{m}-s{seed}" for m in minings]
    return keys


def evaluation_shard(cfg: StudyConfig, shard: int) -> list[str]:
    """The runs of shard ``shard`` (0-based) of ``evaluate.jobs``: round robin over the runs."""
    jobs = cfg.evaluate.jobs
    if not 0 <= shard < jobs:
        raise ConfigError(
            f"evaluation shard {shard} does not exist; evaluate.jobs is {jobs} (shards 0-{jobs - 1})"
        )
    return evaluation_units(cfg)[shard::jobs]


def trial_params(trial: FrozenTrial, cfg: StudyConfig) -> TrialParams:
    """Everything the trial trained with: searched values AND values fixed in the search space."""
    if "trial_params" in trial.user_attrs:
        return TrialParams(**trial.user_attrs["trial_params"])
    fixed = cfg.search_space.fixed
    return TrialParams(**{k: trial.params.get(k, fixed.get(k, v)) for k, v in defaults(cfg.trunk).items()})


def reference_params(cfg: StudyConfig) -> list[TrialParams]:
    """The default recipe (values fixed in the search space kept) at the reference margin, once per
    mining strategy the study searched: fixed before any result is seen."""
    space = cfg.search_space
    base = defaults(cfg.trunk) | space.fixed | {"margin": cfg.evaluate.reference_margin}
    base = get_trunk(cfg).reference_defaults(base)  # what the trunk mode can run (its cached cuts)
    return [TrialParams(**(base | {"mining": m})) for m in space.values("mining")]


def top_trials(cfg: StudyConfig, study: optuna.Study) -> list[FrozenTrial]:
    """The top-N complete trials by validation R@1, one per distinct config (params and epochs)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        raise HarnessError(f"study {cfg.name!r} has no complete trials; run the study first")
    seen: set[str] = set()
    top = []
    draw = draws(study)  # ties go to the earlier draw, as in a study that was never interrupted
    for t in sorted(done, key=lambda t: (-float(t.value or 0.0), draw[t.number])):
        config = json.dumps([asdict(trial_params(t, cfg)), _epochs(t, cfg)], sort_keys=True)
        if config in seen:
            continue
        seen.add(config)
        top.append(t)
        if len(top) == cfg.evaluate.top_n:
            break
    if len(top) < cfg.evaluate.top_n:
        log.warning(
            "study %s: only %d distinct complete configs for evaluate.top_n = %d",
            cfg.name,
            len(top),
            cfg.evaluate.top_n,
        )
    return top


def _epochs(t: FrozenTrial, cfg: StudyConfig) -> int:
    return int(t.user_attrs.get("best_epoch") or cfg.epochs)


def plan(cfg: StudyConfig, study: optuna.Study) -> list[Unit]:
    """The units in the order of the tables: baseline, top configs by rank, references. A comparison
    plans only the baseline (its arms plan the rest); an arm plans no baseline (its comparison's)."""
    units = [] if cfg.parent else [Unit("baseline", BASELINE, "baseline", 0, -1, -1, math.nan, None, 0, -1)]
    for key in baseline_units(cfg)[1:]:
        b = key.removeprefix(ZERO_SHOT)
        units.append(Unit(key, zero_shot_label(cfg, b), "zero-shot", 0, -1, -1, math.nan, None, 0, -1, b))
    if cfg.compare is not None:
        return units
    top, draw = top_trials(cfg, study), draws(study)
    refs = reference_params(cfg) if cfg.evaluate.references else []
    for rank, t in enumerate(top, start=1):
        p, epochs = trial_params(t, cfg), _epochs(t, cfg)
        units += [
            Unit(
                f"top{rank}-s{s}",
                f"trial {t.number}",
                "top",
                rank,
                t.number,
                draw[t.number],
                float(t.value or 0),
                p,
                epochs,
                s,
            )
            for s in cfg.evaluate.seed_list
        ]
    for p in refs:
        label = f"reference {p.mining} m={p.margin:g}"
        units += [
            Unit(f"ref-{p.mining}-s{s}", label, "reference", 0, -1, -1, math.nan, p, int(cfg.epochs), s)
            for s in cfg.evaluate.seed_list
        ]
    return units


class Evaluator:
    """The data, model pool and MLflow parent run that a study's units share in one process."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg = cfg
        self.study = load_study(cfg)
        check_writable(cfg)  # before minutes of training, not after
        self.uid = study_uid(self.study)
        self.device = resolve_device(cfg.device)
        self.split = _searched_split(cfg, self.study)
        self._prep: Prepared | None = None
        # all train classes and the test classes, of one cut at a time (trunk: partial)
        self.sources: Resident[int | None, tuple[Source, Source]] = Resident(
            lambda cut: final_sources(self.prep, self.device, cfg.evaluate.seed, cut)
        )
        self.tracker = tracker_for(cfg)
        self.parent = parent_run(cfg, self.study, self.tracker)
        self._pool: TrunkPool | None = None
        self.mode = compile_mode(cfg, self.device)
        self.dir = cfg.study_dir / "evaluation"

    @property
    def prep(self) -> Prepared:
        """The data, loaded when a unit must run (gathering stored results needs none of it), and
        checked to be the copy and split the search ran on."""
        if self._prep is None:
            prep = prepare(self.cfg, self.device, write=False)
            _check_data(self.cfg, prep, self.study, self.split)
            self._prep = prep
        return self._prep

    @property
    def protocol(self) -> dict[str, Any]:
        """How the test images are scored, as keyword arguments of the metrics: their ``query`` and
        ``gallery`` flags (both None: leave-one-out), the kNN backend and NMI's sample bound."""
        query, gallery = self.prep.split.test_masks()
        ev = self.cfg.evaluate
        return {"query": query, "gallery": gallery, "backend": ev.knn, "nmi_max_images": ev.nmi_max_images}

    @property
    def pool(self) -> TrunkPool:
        if self._pool is None:
            self._pool = self.prep.mode.pool(self.device)
        return self._pool

    def identity(self, unit: Unit) -> dict[str, Any]:
        """What a stored run must match to be reused: the unit's identity, and NMI's sample bound
        when it is not the default (so a bound set later re-scores, and older runs stay reused)."""
        out = unit.identity(self.uid, self.split)
        bound = self.cfg.evaluate.nmi_max_images
        return out if bound == Evaluate().nmi_max_images else out | {"nmi_max_images": bound}

    def path(self, unit: Unit) -> Path:
        """One file per run, named by what it ran (not by its rank, which changes as trials come in)."""
        body = json.dumps(self.identity(unit), sort_keys=True)
        return self.dir / f"run-{hashlib.sha256(body.encode()).hexdigest()[:16]}.npz"

    def stored(self, unit: Unit) -> tuple[dict, dict[str, np.ndarray]] | None:
        """A unit's stored row and per-query scores, if they are of this exact unit."""
        try:
            with np.load(self.path(unit)) as z:
                if json.loads(str(z["identity"])) != self.identity(unit):
                    return None
                row = json.loads(str(z["row"]))
                q = {k.removeprefix("q/"): z[k] for k in z.files if k.startswith("q/")}
        except FileNotFoundError:
            return None
        except Exception as e:  # a damaged file (cut short, not a zip): run the unit again
            log.warning("ignoring evaluation result %s (%s); running it again", self.path(unit), e)
            return None
        row |= {"draw": unit.draw}  # results stored before draws were recorded lack it
        return row | {"rank": unit.rank, "val_recall@1": unit.val_r1} if unit.params else row, q

    def run(self, unit: Unit) -> tuple[dict, dict[str, np.ndarray]]:
        """Train (or, for the baseline, embed) and score on the test classes; store the result."""
        q: dict[str, np.ndarray] = {}
        row: dict[str, Any] = {
            "config": unit.label,
            "kind": unit.kind,
            "rank": unit.rank,
            "trial": unit.trial,
            "draw": unit.draw,
        }
        if unit.backbone is not None:
            params, name, tags = self._zero_shot(unit.backbone, row, q)
        elif unit.params is None:
            params, name, tags = self._baseline(row, q)
        else:
            params, name, tags = self._train_and_score(unit, unit.params, row, q)
        run = self.tracker.trial_run(
            self.parent, unit.trial, params, phase="test", name=name, extra_tags=tags
        )
        self.tracker.log_metrics(
            run, {k: float(v) for k, v in row.items() if k.startswith("test_") or k == "train_s"}
        )
        if row.get("model_dir") and registers(self.cfg, unit):
            row |= self._register(unit, run, Path(row["model_dir"]))
        self.tracker.end(run, "COMPLETE")
        self._store(unit, row, q)
        return row, q

    def _register(self, unit: Unit, run: str, folder: Path) -> dict[str, str]:
        """The best config's model (its first seed's run) into MLflow's registry, ``<study>-best``
        with its alias; a few of the study's own test images are its input example."""
        from mlflow.exceptions import MlflowException

        from harness.tracking.models import log_model, registered_name

        if not (folder / ONNX).is_file():
            log.warning("%s: no ONNX file was written, so no model is registered in MLflow", folder)
            return {}
        x = torch.from_numpy(np.asarray(self.prep.images_u8[self.prep.split.test[:2]]))
        example = center_crop(x.permute(0, 3, 1, 2).float() / 255.0, self.cfg.image_size).numpy()
        try:
            got = log_model(
                self.tracker, run, folder, example, registered_name(self.cfg.name), f"{self.uid}/{unit.key}"
            )
        except (MlflowException, OSError) as e:  # the store has no registry, a full disk: the files stay
            log.warning("the model in %s was not registered in MLflow (%s); its files are there", folder, e)
            return {}
        return {"registered_model": got.uri, "model_version": got.version}

    def _baseline(self, row: dict, q: dict) -> tuple[dict, str, dict[str, str]]:
        """The backbone without triplet training: its own features, cosine kNN (the bar to beat)."""
        t0 = time.perf_counter()
        prep, test = self.prep, self.prep.split.test
        emb = prep.mode.baseline(prep, test, self.device)
        m = retrieval_metrics(
            emb, prep.images.labels[test], distance="cosine", nmi=True, per_query=q, **self.protocol
        )
        row |= {"seed": -1, "epochs": 0, "eval_s": time.perf_counter() - t0}
        row |= {f"test_{k}": v for k, v in m.items()} | self._weights()
        params = {"backbone": self.cfg.backbone, "distance": "cosine"}
        return params, "test-baseline", {"harness.kind_of_config": "baseline"}

    def _zero_shot(self, backbone: str, row: dict, q: dict) -> tuple[dict, str, dict[str, str]]:
        """Another backbone's pretrained features, untrained, on the same test images at the study's
        image size and cache (its own normalisation), cosine kNN."""
        t0 = time.perf_counter()
        prep, test = self.prep, self.prep.split.test
        pretrained = self.cfg.pretrained if backbone in self.cfg.backbones else True  # an arm's: as trained
        trunk, info = create_trunk(backbone, pretrained, seed=self.cfg.seed)
        trunk = trunk.to(self.device)
        emb, ips = embed_images(trunk, prep.images_u8[test], info, self.cfg.image_size, self.device)
        m = retrieval_metrics(
            emb, prep.images.labels[test], distance="cosine", nmi=True, per_query=q, **self.protocol
        )
        record = info.source.record() if info.source is not None else {}
        row |= {"seed": -1, "epochs": 0, "eval_s": time.perf_counter() - t0, "eval_img_per_s": ips}
        row |= {f"test_{k}": v for k, v in m.items()} | weights_columns(record)
        params = {"backbone": backbone, "distance": "cosine"} | weights_params(record)
        return params, f"test-zero-shot-{backbone}", {"harness.kind_of_config": "zero-shot"}

    def _train_and_score(
        self, unit: Unit, p: TrialParams, row: dict, q: dict
    ) -> tuple[dict, str, dict[str, str]]:
        t0 = time.perf_counter()
        log.info("%s (%s), seed %d: %d epochs on all train classes", unit.label, p, unit.seed, unit.epochs)
        torch.manual_seed(unit.seed)
        trainval_src, test_src = self.sources.get(self.prep.mode.cut(p))
        trainval_src.reseed(unit.seed)
        model = build_model(self.prep, p, self.device, self.pool)
        history = train(
            model, p, trainval_src, unit.epochs, self.device, seed=unit.seed, compile_mode=self.mode
        )
        train_s = time.perf_counter() - t0
        kept: dict = {}
        m = evaluate_source(
            model, test_src, p.distance, self.device, nmi=True, per_query=q, embeddings=kept, **self.protocol
        )
        self._store_embeddings(unit, kept["embeddings"], p.distance)
        if self.cfg.evaluate.export == "all" or (
            self.cfg.evaluate.export == "best" and unit.kind == "top" and unit.rank == 1
        ):
            row["model_dir"] = str(self._export(unit, p, model))
        row |= {
            "seed": unit.seed,
            "val_recall@1": unit.val_r1,
            "epochs": unit.epochs,
            **asdict(p),
            "train_s": train_s,
            "train_img_per_s": history[-1]["train_img_per_s"],
            "images_processed": history[-1]["images_processed"],
        }
        row |= {f"test_{k}": v for k, v in m.items()} | self._weights()
        params = asdict(p) | {"epochs": unit.epochs, "seed": unit.seed}
        tags = {
            "harness.rank": str(unit.rank),
            "harness.kind_of_config": unit.kind,
            "harness.config": unit.label,
            "harness.seed": str(unit.seed),
        }
        return params, f"test-{unit.label.replace(' ', '-')}-seed{unit.seed}", tags

    def _weights(self) -> dict[str, str]:
        source = self.prep.trunk_info.source
        return weights_columns(source.record() if source is not None else None)

    def embeddings_path(self, unit: Unit) -> Path:
        """The unit's test embeddings, beside its run file: ``embeddings/run-<id>.npz``."""
        return self.dir / "embeddings" / self.path(unit).name

    def _store_embeddings(self, unit: Unit, emb: torch.Tensor, distance: str) -> None:
        """The test-class embeddings with their image paths and labels, so another tool can re-score
        them (``np.load``: ``embeddings`` [N, D] float32, ``labels`` [N], ``paths`` [N], ``distance``; a
        query-gallery dataset's ``is_query`` and ``is_gallery`` [N] too)."""
        test = self.prep.split.test
        query, gallery = self.prep.split.test_masks()
        flags: dict[str, Any] = (
            {} if query is None or gallery is None else {"is_query": query, "is_gallery": gallery}
        )
        path = self.embeddings_path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path) as tmp:
            np.savez_compressed(
                tmp,
                embeddings=emb.numpy().astype(np.float32),
                labels=np.asarray(self.prep.images.labels)[test],
                paths=np.asarray([self.prep.images.paths[i] for i in test]),
                **flags,
                distance=np.array(distance),
                config=np.array(unit.label),
                seed=np.array(unit.seed),
            )

    def _export(self, unit: Unit, p: TrialParams, trained: torch.nn.Module) -> Path:
        """The run's whole model (images -> embeddings) as TorchScript and ONNX, with its
        preprocessing, in ``evaluation/models/<run>/``."""
        prep = self.prep
        whole = prep.mode.image_model(prep, trained, p, self.device, self.pool)
        source = prep.trunk_info.source
        record = (
            source.record()
            if source is not None
            else {"mean": prep.trunk_info.mean, "std": prep.trunk_info.std}
        )
        folder = self.dir / "models" / self.path(unit).stem
        out = export_model(
            copy.deepcopy(whole).float(),
            folder,
            self.cfg.image_size,
            record
            | {
                "study": self.cfg.name,
                "config": unit.label,
                "seed": unit.seed,
                "distance": p.distance,
                "trunk": self.cfg.trunk,
                "cache_size": self.cfg.cache_px,
                "resize": f"shorter side to cache_size ({self.cfg.cache_px} px, bicubic), centre crop square,"
                f" then centre crop image_size ({self.cfg.image_size} px); harness embed does this",
                "params": asdict(p),
            },
        )
        log.info("%s, seed %d: model written to %s (%s)", unit.label, unit.seed, folder, ", ".join(out.files))
        return folder

    def _store(self, unit: Unit, row: dict, q: dict[str, np.ndarray]) -> None:
        """Identity, row and per-query scores in one file, written whole (temp file, then rename)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"q/{k}": v for k, v in q.items()}
        arrays["identity"] = np.array(json.dumps(self.identity(unit)))
        arrays["row"] = np.array(json.dumps(row, default=_json_default))
        with written_whole(self.path(unit)) as tmp:
            np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


def _searched_split(cfg: StudyConfig, study: optuna.Study) -> str:
    """The split the search ran on, from the stored manifest, refused when it was overwritten."""
    path = cfg.manifest_path
    fix = f"harness data prepare --config {cfg.command_path}"
    if not path.is_file():
        raise HarnessError(f"{path} is missing; rewrite it with '{fix}' (the config the study ran with)")
    manifest = json.loads(path.read_text())
    check_manifest(manifest)
    searched = study.user_attrs.get("split_hash") or manifest["hash"]
    if manifest["hash"] != searched:
        raise HarnessError(
            f"{path} holds split {manifest['hash']}, but study {cfg.name!r} was searched on split"
            f" {searched}: the file was overwritten (another config, or by hand); rewrite it with '{fix}'"
        )
    return str(searched)


def _check_data(cfg: StudyConfig, prep: Prepared, study: optuna.Study, searched: str) -> None:
    """The data now found must give the split, and be the copy, the search ran on."""
    now = prep.split.manifest["hash"]
    if now != searched:
        raise HarnessError(
            f"the data in {prep.images.image_dir.parent} gives split {now}, but study {cfg.name!r} was"
            f" searched on split {searched}; evaluate with the dataset and val_fraction/seed the search used"
        )
    # (a study whose bytes changed since its search was refused by prepare, before any cache)
    stored_fp = study.user_attrs.get("dataset_files")  # studies created before it was recorded: no check
    fp = prep.split.manifest.get("dataset_files")
    if stored_fp and fp != stored_fp:
        raise HarnessError(
            f"the dataset at {prep.images.image_dir.parent} is not the copy study {cfg.name!r} was searched"
            " on"
            f" (dataset fingerprint {fp}, searched on {stored_fp}: other files, labels or file sizes);"
            " point data_root at the copy the search used"
        )


def run_units(cfg: StudyConfig, keys: list[str], ev: Evaluator | None = None) -> dict[str, tuple[dict, dict]]:
    """Run the given units, unless a stored result is already that unit (a rerun after Ctrl-C, or
    another shard): one Snakemake job runs a shard of them, ``evaluate_study`` the rest. Each unit is
    claimed (a lock file beside its result) while it runs, so two evaluations at once never train it
    twice: the second waits, then reuses the first's result."""
    ev = ev or Evaluator(cfg)
    known = evaluation_units(cfg)
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise HarnessError(f"unknown evaluation run {unknown[0]!r}; this study has: {', '.join(known)}")
    units = {u.key: u for u in plan(cfg, ev.study)}
    chosen = [units[k] for k in keys if k in units]  # a rank beyond the distinct configs: skipped
    results: dict[str, tuple[dict, dict]] = {}
    todo = []
    for u in chosen:
        got = ev.stored(u)
        if got is None:
            todo.append(u)
        else:
            results[u.key] = got
    what = f"evaluate {cfg.name}"
    if results:
        progress_log.info("%s: %d of %d runs already done, reused", what, len(results), len(chosen))
    if not todo:
        return results
    # the baseline embeds once and takes seconds; the trained runs set the pace (and the ETA)
    base = [u for u in todo if u.params is None]
    for u in base:
        results[u.key] = _claimed(ev, u)
        progress_log.info("%s: the baseline: test R@1 %.4f", what, results[u.key][0]["test_recall@1"])
    trained = [u for u in todo if u.params is not None]
    progress = Progress(what, len(trained), "runs", every=0)
    for u in trained:
        t0 = time.perf_counter()
        results[u.key] = _claimed(ev, u)
        r1 = results[u.key][0]["test_recall@1"]
        took = duration(time.perf_counter() - t0)
        progress.update(note=f"{u.key}: {u.label}, seed {u.seed}: test R@1 {r1:.4f} in {took}")
    return results


def _claimed(ev: Evaluator, unit: Unit) -> tuple[dict, dict[str, np.ndarray]]:
    """Run ``unit`` holding its claim; a result another process stored meanwhile is reused."""
    path = ev.path(unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as claim:
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("evaluation run %s is being run by another process; waiting for it", unit.key)
            fcntl.flock(claim, fcntl.LOCK_EX)
        got = ev.stored(unit)
        return got if got is not None else ev.run(unit)


def evaluate_shard(cfg: StudyConfig, shard: int) -> None:
    """Shard ``shard`` of ``evaluate.jobs`` (one Snakemake job)."""
    run_units(cfg, evaluation_shard(cfg, shard))


def summary_row(label: str, kind: str, runs: list[dict], queries: list[dict], cfg: StudyConfig) -> dict:
    """Mean and interval per metric: t over seeds when k >= 2, else a bootstrap over queries."""
    row: dict = {"config": label, "kind": kind, "n_seeds": len(runs)}
    method = "t over seeds" if len(runs) >= 2 else "bootstrap over queries"
    row["interval"] = method
    for m in METRICS:
        values = [r[f"test_{m}"] for r in runs]
        ci: Interval
        if len(runs) >= 2 or m not in PER_QUERY:
            ci = t_interval(values)
        else:
            ci = bootstrap_interval(queries[0][m], n_boot=cfg.evaluate.bootstrap, seed=0)
        row[f"test_{m}"] = ci.mean
        row[f"test_{m}_low"] = ci.low
        row[f"test_{m}_high"] = ci.high
    return row


def weights_of(runs: list[dict]) -> dict[str, str]:
    """The weights columns of a config's runs (results stored before they were recorded: none)."""
    return {k: runs[0][k] for k in WEIGHTS_COLUMNS if k in runs[0]}


def model_of(runs: list[dict]) -> dict[str, Any]:
    """The registered model among a config's runs (its first seed's), for its summary row."""
    run = next((r for r in runs if r.get("registered_model")), None)
    if run is None:
        return {}
    keys = ("registered_model", "model_version", "model_dir")
    return {k: run.get(k) for k in keys} | {"model_seed": run["seed"]}


def compare_configs(best: str, other: str, by_seed: dict, queries: dict, cfg: StudyConfig) -> list[dict]:
    out = []
    n_boot = cfg.evaluate.bootstrap
    for m in COMPARED:
        a = [r[f"test_{m}"] for r in by_seed[best]]
        b = [r[f"test_{m}"] for r in by_seed[other]]
        if len(a) >= 2 and len(b) == 1:  # the baseline is one deterministic run: seeds vary a only
            c = replace(paired_t(a, b * len(a)), method="t over seeds (baseline fixed)")
        elif len(a) >= 2 and len(a) == len(b):
            c = paired_t(a, b)
        else:  # one seed: pair the test queries instead
            qa = np.mean([q[m] for q in queries[best]], axis=0)
            qb = np.mean([q[m] for q in queries[other]], axis=0)
            c = paired_bootstrap(qa, qb, n_boot=n_boot, seed=0)
        out.append(
            {
                "config": best,
                "versus": other,
                "metric": m,
                "difference": c.diff,
                "low": c.low,
                "high": c.high,
                "p_value": c.p_value,
                "n": c.n,
                "method": c.method,
            }
        )
    return out


def evaluate_study(cfg: StudyConfig) -> pd.DataFrame:
    """Run the units that are missing (or stale), then gather every unit into the result files."""
    ev = Evaluator(cfg)
    units = plan(cfg, ev.study)
    results = run_units(cfg, [u.key for u in units], ev)
    return gather(cfg, ev, units, results)


def gather(
    cfg: StudyConfig, ev: Evaluator, units: list[Unit], results: dict[str, tuple[dict, dict[str, np.ndarray]]]
) -> pd.DataFrame:
    by_seed: dict[str, list[dict]] = {}
    queries: dict[str, list[dict]] = {}
    for u in units:
        row, q = results[u.key]
        by_seed.setdefault(u.label, []).append(row)
        queries.setdefault(u.label, []).append(q)
    first: dict[str, Unit] = {}  # label -> its first unit, for the per-config columns
    for u in units:
        first.setdefault(u.label, u)
    summary = []
    for label, u in first.items():
        row = summary_row(label, u.kind, by_seed[label], queries[label], cfg)
        row |= (
            {"backbone": u.backbone or cfg.backbone} | weights_of(by_seed[label]) | model_of(by_seed[label])
        )
        row |= {"rank": u.rank, "trial": u.trial, "draw": u.draw}
        row |= {"val_recall@1": u.val_r1, "epochs": u.epochs}
        if u.params is not None:
            row |= asdict(u.params)
        summary.append(row)
    best = next(u.label for u in units if u.kind == "top")
    comparisons = [
        c
        for label, u in first.items()
        if u.kind == "reference"
        for c in compare_configs(best, label, by_seed, queries, cfg)
    ]
    comparisons += compare_configs(best, BASELINE, by_seed, queries, cfg)

    uid = ev.uid
    runs = [row for rows in by_seed.values() for row in rows]  # baseline first, then configs in order
    study_dir = cfg.study_dir
    write_csv(pd.DataFrame(runs).assign(study_uid=uid), study_dir / "test_runs.csv")
    write_csv(pd.DataFrame(comparisons).assign(study_uid=uid), study_dir / "comparisons.csv")
    arrays = {
        f"{label}|seed{r['seed']}|{m}": q[m]
        for label in queries
        for r, q in zip(by_seed[label], queries[label], strict=True)
        for m in ("recall@1", "map@r")
    }
    arrays["study_uid"] = np.array(uid)
    with written_whole(study_dir / "test_queries.npz") as tmp:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    df = pd.DataFrame(summary).assign(study_uid=uid)
    write_csv(df, study_dir / "test.csv")  # last: the pipeline's output marks the whole step done
    for name in ("test_runs.csv", "comparisons.csv"):
        ev.tracker.log_file(ev.parent, study_dir / name, "evaluation")
    return df


@contextlib.contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """A temp path of this process's own beside ``out`` (two evaluations of one study may finish at
    the same moment), renamed over ``out`` when the block succeeds and removed on every path. It
    keeps ``out``'s suffix: ``np.savez`` would append ``.npz`` to any other."""
    tmp = out.with_name(f".{out.stem}.{os.getpid()}{out.suffix}")
    try:
        yield tmp
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(df: pd.DataFrame, out: Path) -> None:
    with written_whole(out) as tmp:
        df.to_csv(tmp, index=False)
