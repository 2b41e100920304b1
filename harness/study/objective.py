"""The Optuna objective: one trial = train on train-minus-val classes, score on val classes."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from harness.models.weights import weights_params
from harness.params import TABLE, HyperParam, TrialParams
from harness.progress import duration
from harness.study.config import MANIFEST, Choices, Fixed, Range, SearchSpace, Spec, StudyConfig
from harness.study.data import Prepared, Resident, build_model, compile_mode, hpo_sources
from harness.study.optuna_api import RETRY_HISTORY, system_attrs, trial_id
from harness.study.sampler import chain_draw
from harness.study.storage import OWNER_ATTR, owner_record
from harness.tracking import Tracker
from harness.training import Source, TrainingDiverged, train
from harness.training.checkpoint import TrialCheckpoint

log = logging.getLogger(__name__)
progress_log = logging.getLogger("harness.progress")


def _suggest(trial: optuna.Trial, p: HyperParam, spec: Spec) -> Any:
    if isinstance(spec, Choices):
        return trial.suggest_categorical(p.name, list(spec.options))
    if isinstance(spec, Range):
        if p.domain.integer:
            step = int(spec.step or 1)
            return trial.suggest_int(p.name, int(spec.low), int(spec.high), step=step, log=spec.log)
        return trial.suggest_float(p.name, spec.low, spec.high, step=spec.step, log=spec.log)
    assert isinstance(spec, Fixed)
    return spec.value  # fixed value: not searched, but recorded with the trial


def suggest_params(trial: optuna.Trial, space: SearchSpace) -> TrialParams:
    """Suggest names equal the table's, asked in its order; a parameter exists only where it is
    active (a miner's own knobs when it is chosen, the trainable trunk's with ``trunk: partial``)."""
    values: dict[str, Any] = {}
    for p in TABLE.values():
        if p.active(space.trunk, values):
            values[p.name] = _suggest(trial, p, space.spec(p.name))
        else:
            values[p.name] = p.default if p.applies(space.trunk) else p.off
    return TrialParams(**values)


class Objective:
    def __init__(
        self,
        cfg: StudyConfig,
        prep: Prepared,
        device: torch.device,
        tracker: Tracker | None = None,
        parent_run: str | None = None,
        uid: str | None = None,
    ) -> None:
        self.cfg, self.prep, self.device = cfg, prep, device
        self.tracker, self.parent_run = tracker, parent_run
        self.uid = uid  # the study incarnation: checkpoints and events of another are never mixed in
        # the train and validation sources of one cut at a time (trunk: partial: a deep cut's
        # activations with their views can fill a GPU)
        self.sources: Resident[tuple[int | None, int], tuple[Source, Source]] = Resident(
            lambda key: hpo_sources(self.prep, self.device, *key)
        )
        self.sources.get((prep.mode.cut(None), 0))
        self.pool = prep.mode.pool(device)  # the worker's one trunk for all trials
        self.mode = compile_mode(cfg, device)  # the training step: eager, compiled or CUDA graphs
        self.current: int | None = None  # the latest trial started (the SIGTERM handler re-queues it)

    def trial_dir(self, number: int) -> Path:
        return self.cfg.study_dir / "trials" / str(number)

    def event(self, number: int, event: str, **extra: Any) -> None:
        """One line per start / resume / end in trials/<number>/events.jsonl: who ran what, when."""
        line = {
            "event": event,
            "uid": self.uid,
            "time": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        path = self.trial_dir(number) / "events.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(line | extra) + "\n")

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        return TrialRun(self, trial).run()


class TrialRun:
    """One trial: its params and seed, its checkpoint (or an ancestor's to resume), its MLflow run,
    the epochs it reports; every exit path ends its records.

    With ``val_folds`` = k > 1 the trial trains k times, once per validation fold, from the same
    initial weights; it reports step ``fold * epochs + epoch`` with the running mean, over the folds
    seen so far, of validation R@1 at that epoch (the pruner compares trials at equal steps), and
    its value is the best epoch of the mean over all k folds."""

    def __init__(self, objective: Objective, trial: optuna.Trial) -> None:
        self.o, self.trial, cfg = objective, trial, objective.cfg
        self.stored = isinstance(trial, optuna.Trial)  # FixedTrial (re-running a config by hand): no storage
        system = system_attrs(trial) if self.stored else {}
        if self.stored:
            trial.set_user_attr(OWNER_ATTR, owner_record(trial_id(trial)))
        self.params = suggest_params(trial, cfg.search_space)
        trial.set_user_attr("trial_params", asdict(self.params))  # fixed values too: evaluate re-trains these
        self.history_of_retries = list(system.get(RETRY_HISTORY, []))
        # every random stream of training (init, batches, views, folds' order, offline mining) comes
        # from this seed: the study's seed plus the trial's draw index, so a resumed study trains each
        # draw as an uninterrupted one does; a retry continues its original's (draw and seed)
        draw = chain_draw(trial.study, trial.number, system) if self.stored else trial.number
        self.seed = cfg.seed + draw
        trial.set_user_attr("draw", draw)
        trial.set_user_attr("seed", self.seed)
        self.checkpoints = cfg.fault_tolerance.checkpoints
        self.checkpoint = TrialCheckpoint(objective.trial_dir(trial.number) / "checkpoint.pt", objective.uid)
        # newest first: a retry that died before its first epoch left no checkpoint of its own
        self.ancestors = [
            (n, TrialCheckpoint(objective.trial_dir(n) / "checkpoint.pt", objective.uid))
            for n in reversed(self.history_of_retries)
        ]
        self.resume, self.resumed_from = self._resume_point()
        self.run_id = self._open_run()
        self.best = {"value": -math.inf, "epoch": 0}
        self.history: list[dict[str, float]] = []  # every epoch of every fold, in order
        self.folds: list[list[dict[str, float]]] = [[] for _ in range(objective.prep.split.n_folds)]
        self.raw: list[list[dict[str, float]]] = [[] for _ in self.folds]  # as train() gave them
        self.fold = 0  # the fold in training
        self.clock = {"start": time.perf_counter(), "first": 0}  # ETA from the epochs this process ran

    def _resume_point(self) -> tuple[dict | None, int | None]:
        """The newest checkpoint of the retry chain this trial continues, if any."""
        if not self.checkpoints:
            return None, None
        for number, ckpt in self.ancestors:
            state = ckpt.load()
            if state is not None:
                return state, number
        return None, None

    def _open_run(self) -> str | None:
        o, trial = self.o, self.trial
        if o.tracker is None or o.parent_run is None:
            return None
        link = {}
        if self.history_of_retries:
            link = {"harness.retry_of": str(self.history_of_retries[-1])}
            if "mlflow_run_id" in trial.user_attrs:  # inherited from the trial it retries
                link["harness.retry_of_run"] = str(trial.user_attrs["mlflow_run_id"])
        params = asdict(self.params) | {"epochs": o.cfg.epochs, "seed": self.seed}
        params |= weights_params(source.record() if (source := o.prep.trunk_info.source) else None)
        run = o.tracker.trial_run(o.parent_run, trial.number, params, extra_tags=link)
        trial.set_user_attr("mlflow_run_id", run)
        o.tracker.log_json(run, o.prep.split.manifest, MANIFEST)
        o.tracker.log_json(run, o.cfg.to_dict(), "study_config.json")
        return run

    @property
    def steps(self) -> int:
        return len(self.folds) * self.o.cfg.epochs

    def on_epoch(self, epoch: int, stats: dict[str, float]) -> None:
        """Log, report to the pruner, and prune: called after each epoch of each fold (and for the
        epochs a resumed trial had already run)."""
        trial, epochs, fold = self.trial, self.o.cfg.epochs, self.fold
        self.raw[fold].append(stats)
        offset = sum(f[-1]["images_processed"] for f in self.raw[:fold])  # compute of earlier folds
        stats = stats | {"fold": float(fold), "images_processed": offset + stats["images_processed"]}
        self.folds[fold].append(stats)
        step = fold * epochs + epoch
        r1 = float(np.mean([f[epoch - 1]["val_recall@1"] for f in self.folds[: fold + 1]]))
        stats["val_recall@1_running_mean"] = r1
        self.history.append(stats)
        ran = step - self.clock["first"]
        left = (time.perf_counter() - self.clock["start"]) / max(ran, 1) * (self.steps - step)
        where = f"fold {fold + 1}/{len(self.folds)}, " if len(self.folds) > 1 else ""
        progress_log.info(
            "trial %d: %sepoch %d/%d, val R@1 %.4f, %s img/s; ETA %s",
            trial.number,
            where,
            epoch,
            epochs,
            stats["val_recall@1"],
            f"{stats['train_img_per_s']:,.0f}",
            duration(left),
        )
        if self.run_id is not None and self.o.tracker is not None:
            self.o.tracker.log_metrics(self.run_id, stats, step=step)
        if r1 > self.best["value"]:
            self.best.update(value=r1, epoch=epoch)
        trial.report(r1, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at {where}epoch {epoch} with val R@1 {r1:.4f}")

    def _final_best(self) -> None:
        """All folds done: the epoch whose validation R@1, averaged over the folds, is highest (one
        fold: the epoch of the best R@1, as reported)."""
        if len(self.folds) == 1:
            return
        mean = np.mean([[h["val_recall@1"] for h in f] for f in self.folds], axis=0)
        self.best.update(value=float(mean.max()), epoch=int(mean.argmax()) + 1)

    def _announce(self) -> None:
        trial, o = self.trial, self.o
        if self.resume is not None:
            done = int(self.resume["epoch"])
            log.info("trial %d resumes trial %d after epoch %d", trial.number, self.resumed_from, done)
            trial.set_user_attr("resumed_from", {"trial": self.resumed_from, "epoch": done})
            o.event(trial.number, "resume", from_trial=self.resumed_from, after_epoch=done)
        else:
            if self.stored and "resumed_from" in trial.user_attrs:  # inherited from the trial it retries
                trial.set_user_attr("resumed_from", None)
            retry_of = self.history_of_retries[-1] if self.history_of_retries else None
            o.event(trial.number, "start", retry_of=retry_of)

    def _train(self) -> None:
        o, p = self.o, self.params
        first = int(self.resume.get("fold", 0)) if self.resume is not None else 0
        if self.resume is not None:  # the pruner and MLflow see the epochs done before the kill
            done = [*self.resume.get("fold_histories", []), self.resume["history"]]
            for fold, history in enumerate(done):
                self.fold = fold
                for h in history:
                    self.on_epoch(int(h["epoch"]), h)
            self.clock.update(
                start=time.perf_counter(), first=first * o.cfg.epochs + int(self.resume["epoch"])
            )
        for fold in range(first, len(self.folds)):
            self.fold = fold
            torch.manual_seed(self.seed)  # every fold starts from the same weights
            train_src, val_src = o.sources.get((o.prep.mode.cut(p), fold))
            train_src.reseed(self.seed)
            model = build_model(o.prep, p, o.device, o.pool)
            train(
                model,
                p,
                train_src,
                o.cfg.epochs,
                o.device,
                seed=self.seed,
                val_src=val_src,
                on_epoch=self.on_epoch,
                resume=self.resume if fold == first else None,
                on_checkpoint=self._save if self.checkpoints else None,
                compile_mode=o.mode,
            )
        self._final_best()

    def _save(self, state: dict) -> None:
        """A fold's epoch checkpoint, with the fold and the folds already done."""
        self.checkpoint.save(state | {"fold": self.fold, "fold_histories": self.raw[: self.fold]})

    def run(self) -> float:
        self._announce()
        state = "FAIL"
        try:
            self._train()
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except TrainingDiverged as e:
            log.warning("trial %d failed: %s", self.trial.number, e)
            self.trial.set_user_attr("fail_reason", str(e))
            self._record_failure(str(e))
            state = "DIVERGED"
            return math.nan  # Optuna records FAIL and the study goes on
        finally:
            self._end(state)
        return self.best["value"]

    def _record_failure(self, reason: str) -> None:
        """trials/<n>/error.txt says why the trial failed, as for a crash (where the traceback goes)."""
        where = self.o.trial_dir(self.trial.number) / "error.txt"
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_text(f"trial {self.trial.number} failed: {reason}\nparams: {asdict(self.params)}\n")
        except OSError as e:
            log.warning("trial %d: could not write %s (%s)", self.trial.number, where, e)

    def _end(self, state: str) -> None:
        """Every exit path ends the trial's records; on a full disk these writes may fail too, and
        must not hide the error that ended the trial (the next sweep closes what is left)."""
        final = "FAIL" if state == "DIVERGED" else state
        try:
            if state != "FAIL":  # finished for good: its checkpoints are no longer needed
                self.checkpoint.remove()
                for _, ckpt in self.ancestors:
                    ckpt.remove()
            self.o.event(self.trial.number, "end", state=final)
        except OSError as e:
            log.warning("trial %d: could not write its end event (%s)", self.trial.number, e)
        try:
            self._summarise(final)
        except Exception as e:
            log.warning("trial %d: could not end its records or MLflow run (%s)", self.trial.number, e)

    def _summarise(self, state: str) -> None:
        history, trial, tracker = self.history, self.trial, self.o.tracker
        if history:
            summary = {
                "best_epoch": self.best["epoch"],
                "train_img_per_s": sum(h["train_img_per_s"] for h in history) / len(history),
                "images_processed": history[-1]["images_processed"],
                "active_fraction": history[-1]["active_fraction"],
                "epochs_run": len(history),
                "host_load": max(h.get("host_load", float("nan")) for h in history),
                "host_cpus": history[-1].get("host_cpus", float("nan")),
                # validation R@1 against compute spent: offline mining's whole-set passes count
                "curve": [[h["images_processed"], h["val_recall@1_running_mean"]] for h in history],
            }
            for k, v in summary.items():
                trial.set_user_attr(k, v)
            if self.run_id is not None and tracker is not None:
                tracker.log_metrics(
                    self.run_id, {"best_val_recall@1": self.best["value"], "best_epoch": self.best["epoch"]}
                )
        if self.run_id is not None and tracker is not None:
            tracker.end(self.run_id, state)
