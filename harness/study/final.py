"""Final evaluation: the top-N validation configs, re-trained on all train classes, on TEST classes.

This is the only code that reads the test split. Each config trains for the epoch count at which
its trial peaked on validation (chosen without test data), then is scored once on test.
"""

from __future__ import annotations

import json
import logging
import time

import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState

from harness.data.splits import check_manifest
from harness.errors import HarnessError
from harness.evaluation import retrieval_metrics
from harness.models.features import embed_images
from harness.study.config import PARAM_DEFAULTS, StudyConfig
from harness.study.data import Prepared, TrunkPool, build_model, final_sources, prepare, resolve_device
from harness.study.runner import load_study, study_uid, tracker_for
from harness.training import TrialParams, evaluate_source, train

log = logging.getLogger(__name__)
BASELINE = "baseline (no triplet training)"


def baseline_metrics(prep: Prepared, device: torch.device) -> dict[str, float]:
    """The pretrained trunk's own features (cosine kNN) on the test classes: the bar to beat."""
    idx = prep.split.test
    t0 = time.perf_counter()
    if prep.features is not None:
        feats = torch.from_numpy(prep.features[idx].copy())
    else:
        from harness.models import create_trunk

        trunk, info = create_trunk(prep.cfg.backbone, prep.cfg.pretrained, prep.cfg.checkpoint)
        feats, _ = embed_images(trunk.to(device), prep.images_u8[idx], info, prep.cfg.image_size, device)
    m = retrieval_metrics(feats, prep.images.labels[idx], distance="cosine", nmi=True)
    m["eval_s"] = time.perf_counter() - t0
    return m


def trial_params(trial: FrozenTrial, cfg: StudyConfig) -> TrialParams:
    """Everything the trial trained with: searched values AND values fixed in the search space."""
    if "trial_params" in trial.user_attrs:
        return TrialParams(**trial.user_attrs["trial_params"])
    fixed = {k: v for k, v in cfg.search_space.items() if not isinstance(v, dict)}
    return TrialParams(**{k: trial.params.get(k, fixed.get(k, PARAM_DEFAULTS[k])) for k in PARAM_DEFAULTS})


def evaluate_study(cfg: StudyConfig) -> pd.DataFrame:
    study = load_study(cfg)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        raise HarnessError(f"study {cfg.name!r} has no complete trials; run the study first")
    top = sorted(done, key=lambda t: float(t.value or 0.0), reverse=True)[: int(cfg.evaluate["top_n"])]
    device = resolve_device(cfg.device)
    prep = prepare(cfg, device, write=False)
    manifest = json.loads((cfg.study_dir / "split_manifest.json").read_text())
    check_manifest(manifest)
    searched = study.user_attrs.get("split_hash") or manifest["hash"]
    if prep.split.manifest["hash"] != searched or manifest["hash"] != searched:
        raise HarnessError(
            f"study {cfg.name!r} was searched on split {searched}, but the data now gives"
            f" {prep.split.manifest['hash']}; evaluate with the dataset and split the search used"
        )
    seed = int(cfg.evaluate.get("seed", 0))
    trainval_src, test_src = final_sources(prep, device, seed)
    tracker = tracker_for(cfg)
    parent = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
    rows = []
    pool = TrunkPool(cfg, device)
    base = baseline_metrics(prep, device)
    rows.append(
        {
            "config": BASELINE,
            "rank": 0,
            "trial": -1,
            "val_recall@1": float("nan"),
            "epochs": 0,
            **{f"test_{k}": v for k, v in base.items()},
        }
    )
    run = tracker.trial_run(
        parent, -1, {"backbone": cfg.backbone, "distance": "cosine"}, phase="test", name="test-baseline"
    )
    tracker.log_metrics(run, {f"test_{k}": v for k, v in base.items()})
    tracker.end(run, "COMPLETE")
    for rank, trial in enumerate(top, start=1):
        params = trial_params(trial, cfg)
        epochs = int(trial.user_attrs.get("best_epoch") or cfg.epochs)
        log.info("rank %d: trial %d %s, %d epochs on all train classes", rank, trial.number, params, epochs)
        torch.manual_seed(seed)
        model = build_model(prep, params, device, pool)
        t0 = time.perf_counter()
        history = train(model, params, trainval_src, epochs, device, seed=seed)
        train_s = time.perf_counter() - t0
        m = evaluate_source(model, test_src, params.distance, device, nmi=True)
        row = {
            "config": f"trial {trial.number}",
            "rank": rank,
            "trial": trial.number,
            "val_recall@1": trial.value,
            "epochs": epochs,
            **vars(params),
            "train_s": train_s,
            "train_img_per_s": history[-1]["train_img_per_s"],
            **{f"test_{k}": v for k, v in m.items()},
        }
        rows.append(row)
        run = tracker.trial_run(
            parent,
            trial.number,
            vars(params) | {"epochs": epochs},
            phase="test",
            name=f"test-{trial.number}",
            extra_tags={"harness.rank": str(rank)},
        )
        tracker.log_metrics(run, {k: v for k, v in row.items() if k.startswith("test_") or k == "train_s"})
        tracker.end(run, "COMPLETE")
    df = pd.DataFrame(rows)
    out = cfg.study_dir / "test.csv"
    df.to_csv(out.with_suffix(".tmp"), index=False)
    out.with_suffix(".tmp").replace(out)
    return df
