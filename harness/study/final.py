"""Final evaluation: the chosen configs, re-trained with k seeds on all train classes, on TEST classes.

This is the only code that reads the test split. The configs are the top-N trials by validation
Recall@1 (each trained for the epoch count at which it peaked on validation) and a fixed reference
set chosen without looking at any result: the default margin (0.2) with each mining strategy of
the search space, every other parameter at its default. Every config is trained with the same k
seeds (default 3), so configs can be compared paired by seed.

Writes under results/{study}/:
- ``test_runs.csv``: one row per (config, seed);
- ``test.csv``: one row per config: mean and 95 % interval of each metric (t over seeds; with one
  seed, a bootstrap over test queries), the no-training baseline first;
- ``comparisons.csv``: the best config minus each reference and minus the baseline, with a 95 %
  interval and p-value: paired t over seeds (against the one deterministic baseline run, a
  one-sample t over the seeds' differences); with one seed, a paired bootstrap over test queries;
- ``test_queries.npz``: per-query R@1 and AP@R of every run, for re-analysis.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState

from harness.data.splits import check_manifest
from harness.errors import HarnessError
from harness.evaluation import retrieval_metrics
from harness.evaluation.stats import Interval, bootstrap_interval, paired_bootstrap, paired_t, t_interval
from harness.models.features import embed_images
from harness.study.config import PARAM_DEFAULTS, StudyConfig, param_values
from harness.study.data import Prepared, TrunkPool, build_model, final_sources, prepare, resolve_device
from harness.study.runner import load_study, study_uid, tracker_for
from harness.training import TrialParams, evaluate_source, train

log = logging.getLogger(__name__)
BASELINE = "baseline (no triplet training)"
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")
PER_QUERY = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision")
COMPARED = ("recall@1", "map@r")


def baseline_embeddings(prep: Prepared, device: torch.device) -> torch.Tensor:
    """The pretrained trunk's own features on the test classes: the bar to beat."""
    idx = prep.split.test
    if prep.features is not None:
        return torch.from_numpy(prep.features[idx].copy())
    from harness.models import create_trunk

    trunk, info = create_trunk(prep.cfg.backbone, prep.cfg.pretrained, prep.cfg.checkpoint)
    feats, _ = embed_images(trunk.to(device), prep.images_u8[idx], info, prep.cfg.image_size, device)
    return feats


def trial_params(trial: FrozenTrial, cfg: StudyConfig) -> TrialParams:
    """Everything the trial trained with: searched values AND values fixed in the search space."""
    if "trial_params" in trial.user_attrs:
        return TrialParams(**trial.user_attrs["trial_params"])
    fixed = cfg.fixed_params
    return TrialParams(**{k: trial.params.get(k, fixed.get(k, PARAM_DEFAULTS[k])) for k in PARAM_DEFAULTS})


def reference_params(cfg: StudyConfig) -> list[TrialParams]:
    """The default recipe (values fixed in the search space kept) at the reference margin, once per
    mining strategy the study searched: fixed before any result is seen."""
    base = PARAM_DEFAULTS | cfg.fixed_params | {"margin": float(cfg.evaluate["reference_margin"])}
    minings = param_values(cfg.search_space.get("mining", PARAM_DEFAULTS["mining"]))
    return [TrialParams(**(base | {"mining": m})) for m in minings]


def _summary_row(label: str, kind: str, runs: list[dict], queries: list[dict], cfg: StudyConfig) -> dict:
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
            ci = bootstrap_interval(queries[0][m], n_boot=int(cfg.evaluate["bootstrap"]), seed=0)
        row[f"test_{m}"] = ci.mean
        row[f"test_{m}_low"] = ci.low
        row[f"test_{m}_high"] = ci.high
    return row


def _compare(best: str, other: str, by_seed: dict, queries: dict, cfg: StudyConfig) -> list[dict]:
    out = []
    n_boot = int(cfg.evaluate["bootstrap"])
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


def _check_split(cfg: StudyConfig, prep: Prepared, searched: str | None) -> None:
    manifest = json.loads((cfg.study_dir / "split_manifest.json").read_text())
    check_manifest(manifest)
    searched = searched or manifest["hash"]
    if prep.split.manifest["hash"] != searched or manifest["hash"] != searched:
        raise HarnessError(
            f"study {cfg.name!r} was searched on split {searched}, but the data now gives"
            f" {prep.split.manifest['hash']}; evaluate with the dataset and split the search used"
        )


def evaluate_study(cfg: StudyConfig) -> pd.DataFrame:
    study = load_study(cfg)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        raise HarnessError(f"study {cfg.name!r} has no complete trials; run the study first")
    top = sorted(done, key=lambda t: float(t.value or 0.0), reverse=True)[: int(cfg.evaluate["top_n"])]
    device = resolve_device(cfg.device)
    prep = prepare(cfg, device, write=False)
    _check_split(cfg, prep, study.user_attrs.get("split_hash"))
    first_seed = int(cfg.evaluate["seed"])
    seeds = [first_seed + i for i in range(int(cfg.evaluate["seeds"]))]
    trainval_src, test_src = final_sources(prep, device, first_seed)
    tracker = tracker_for(cfg)
    parent = tracker.parent_run(cfg.name, study_uid(study), cfg.to_dict())
    pool = TrunkPool(cfg, device)

    # (label, kind, rank, trial number, validation R@1, params, epochs)
    configs = [
        (
            f"trial {t.number}",
            "top",
            rank,
            t.number,
            t.value,
            trial_params(t, cfg),
            int(t.user_attrs.get("best_epoch") or cfg.epochs),
        )
        for rank, t in enumerate(top, start=1)
    ]
    if cfg.evaluate["references"]:
        configs += [
            (f"reference {p.mining} m={p.margin:g}", "reference", 0, -1, float("nan"), p, int(cfg.epochs))
            for p in reference_params(cfg)
        ]

    queries: dict[str, list[dict]] = {}
    by_seed: dict[str, list[dict]] = {}

    t0 = time.perf_counter()
    base_q: dict[str, np.ndarray] = {}
    base = retrieval_metrics(
        baseline_embeddings(prep, device),
        prep.images.labels[prep.split.test],
        distance="cosine",
        nmi=True,
        per_query=base_q,
    )
    base_row: dict[str, Any] = {
        "config": BASELINE,
        "kind": "baseline",
        "rank": 0,
        "trial": -1,
        "seed": -1,
        "epochs": 0,
        "eval_s": time.perf_counter() - t0,
        **{f"test_{k}": v for k, v in base.items()},
    }
    queries[BASELINE], by_seed[BASELINE] = [base_q], [base_row]
    run = tracker.trial_run(
        parent,
        -1,
        {"backbone": cfg.backbone, "distance": "cosine"},
        phase="test",
        name="test-baseline",
        extra_tags={"harness.kind_of_config": "baseline"},
    )
    tracker.log_metrics(run, {k: float(v) for k, v in base_row.items() if k.startswith("test_")})
    tracker.end(run, "COMPLETE")

    for label, kind, rank, number, val_r1, params, epochs in configs:
        for seed in seeds:
            log.info("%s (%s), seed %d: %d epochs on all train classes", label, params, seed, epochs)
            torch.manual_seed(seed)
            trainval_src.reseed(seed)
            model = build_model(prep, params, device, pool)
            t1 = time.perf_counter()
            history = train(model, params, trainval_src, epochs, device, seed=seed)
            train_s = time.perf_counter() - t1
            q: dict[str, np.ndarray] = {}
            m = evaluate_source(model, test_src, params.distance, device, nmi=True, per_query=q)
            row = {
                "config": label,
                "kind": kind,
                "rank": rank,
                "trial": number,
                "seed": seed,
                "val_recall@1": val_r1,
                "epochs": epochs,
                **vars(params),
                "train_s": train_s,
                "train_img_per_s": history[-1]["train_img_per_s"],
                "images_processed": history[-1]["images_processed"],
                **{f"test_{k}": v for k, v in m.items()},
            }
            queries.setdefault(label, []).append(q)
            by_seed.setdefault(label, []).append(row)
            name = f"test-{label.replace(' ', '-')}-seed{seed}"
            run = tracker.trial_run(
                parent,
                number,
                vars(params) | {"epochs": epochs, "seed": seed},
                phase="test",
                name=name,
                extra_tags={
                    "harness.rank": str(rank),
                    "harness.kind_of_config": kind,
                    "harness.config": label,
                    "harness.seed": str(seed),
                },
            )
            tracker.log_metrics(
                run, {k: v for k, v in row.items() if k.startswith("test_") or k == "train_s"}
            )
            tracker.end(run, "COMPLETE")

    summary = [_summary_row(BASELINE, "baseline", by_seed[BASELINE], queries[BASELINE], cfg)]
    summary[0] |= {"rank": 0, "trial": -1, "val_recall@1": float("nan"), "epochs": 0}
    for label, kind, rank, number, val_r1, params, epochs in configs:
        row = _summary_row(label, kind, by_seed[label], queries[label], cfg)
        summary.append(
            row | {"rank": rank, "trial": number, "val_recall@1": val_r1, "epochs": epochs, **vars(params)}
        )
    best = configs[0][0]
    comparisons = [
        c
        for label, kind, *_ in configs
        if kind == "reference"
        for c in _compare(best, label, by_seed, queries, cfg)
    ]
    comparisons += _compare(best, BASELINE, by_seed, queries, cfg)

    runs = [row for rows in by_seed.values() for row in rows]  # baseline first, then configs in order
    _write_csv(pd.DataFrame(runs), cfg.study_dir / "test_runs.csv")
    _write_csv(pd.DataFrame(comparisons), cfg.study_dir / "comparisons.csv")
    np.savez_compressed(
        cfg.study_dir / "test_queries.npz",
        **{
            f"{label}|seed{r['seed']}|{m}": q[m]
            for label in queries
            for r, q in zip(by_seed[label], queries[label])
            for m in ("recall@1", "map@r")
        },
    )
    df = pd.DataFrame(summary)
    _write_csv(df, cfg.study_dir / "test.csv")  # last: the pipeline's output marks the whole step done
    for name in ("test_runs.csv", "comparisons.csv"):
        tracker.log_file(parent, cfg.study_dir / name, "evaluation")
    return df


def _write_csv(df: pd.DataFrame, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
