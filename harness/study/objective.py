"""The Optuna objective: one trial = train on train-minus-val classes, score on val classes."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from harness.progress import duration
from harness.study.config import PARAM_DEFAULTS, PARTIAL_PARAMS, StudyConfig
from harness.study.data import Prepared, TrunkPool, build_model, compile_mode, hpo_sources
from harness.study.storage import OWNER_ATTR, owner_record
from harness.tracking import Tracker
from harness.training import Source, TrainingDiverged, TrialParams, train
from harness.training.checkpoint import TrialCheckpoint

log = logging.getLogger(__name__)
progress_log = logging.getLogger("harness.progress")

INT_PARAMS = {"batch_p", "batch_k", "embedding_dim", "refresh_every", "train_blocks"}
ORDER = ("margin", "batch_p", "batch_k", "distance", "mining", "lr", "embedding_dim", "weight_decay")


def _suggest(trial: optuna.Trial, key: str, spec: Any) -> Any:
    if isinstance(spec, dict) and "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    if isinstance(spec, dict):
        log_ = bool(spec.get("log", False))
        if key in INT_PARAMS:
            return trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)), log=log_
            )
        return trial.suggest_float(key, spec["low"], spec["high"], step=spec.get("step"), log=log_)
    return spec  # fixed value: not searched, but recorded with the trial


def suggest_params(trial: optuna.Trial, space: dict[str, Any], partial: bool = False) -> TrialParams:
    """Suggest names equal the config keys; a miner's own knobs exist only when it is chosen, and
    the trainable trunk's (train_blocks, trunk_lr, bn) only with ``trunk: partial``."""
    values = {k: _suggest(trial, k, space.get(k, PARAM_DEFAULTS[k])) for k in ORDER}
    if str(values["mining"]).startswith("offline-"):
        values["refresh_every"] = _suggest(trial, "refresh_every", space.get("refresh_every", 1))
    if partial:
        values |= {k: _suggest(trial, k, space.get(k, PARAM_DEFAULTS[k])) for k in PARTIAL_PARAMS}
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
        self.sources: dict[int | None, tuple[Source, Source]] = {}  # per cut (trunk: partial)
        self.train_src, self.val_src = self.sources_for(None)
        self.pool = TrunkPool(cfg, device)  # the worker's one trunk for all trials
        self.mode = compile_mode(cfg, device)  # the training step: eager, compiled or CUDA graphs
        self.current: int | None = None  # the latest trial started (the SIGTERM handler re-queues it)

    def sources_for(self, cut: int | None) -> tuple[Source, Source]:
        """The train and validation sources (for trunk: partial, those of the trial's cut: one cut
        resident at a time, as a deep cut's activations with their views can fill a GPU)."""
        if self.prep.activations is not None and cut is None:
            cut = min(self.prep.activations)
        if cut not in self.sources:
            self.sources.clear()
            self.train_src = self.val_src = None  # type: ignore[assignment]  # freed before the next cut loads
            self.sources[cut] = hpo_sources(self.prep, self.device, cut)
        self.train_src, self.val_src = self.sources[cut]
        return self.sources[cut]

    def trial_dir(self, number: int) -> Path:
        return self.cfg.study_dir / "trials" / str(number)

    def _event(self, number: int, event: str, **extra: Any) -> None:
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
        stored = isinstance(trial, optuna.Trial)  # FixedTrial (re-running a config by hand) has no storage
        system = trial.storage.get_trial_system_attrs(trial._trial_id) if stored else {}
        if stored:
            trial.set_user_attr(OWNER_ATTR, owner_record(trial._trial_id))
        params = suggest_params(trial, self.cfg.search_space, partial=self.cfg.trunk == "partial")
        trial.set_user_attr("trial_params", vars(params))  # fixed values too: evaluate re-trains with these
        retry_history = list(system.get("retry_history", []))
        # a retry continues its original's random streams: reproducible from (params, seed) alone
        seed = self.cfg.seed + int(system.get("failed_trial", trial.number))
        trial.set_user_attr("seed", seed)
        ckpt_on = bool(self.cfg.fault_tolerance["checkpoints"])
        checkpoint = TrialCheckpoint(self.trial_dir(trial.number) / "checkpoint.pt", self.uid)
        # newest first: a retry that died before its first epoch left no checkpoint of its own
        ancestors = [
            TrialCheckpoint(self.trial_dir(n) / "checkpoint.pt", self.uid) for n in reversed(retry_history)
        ]
        resume, source_trial = None, None
        for number, ckpt in zip(reversed(retry_history), ancestors, strict=True):
            resume = ckpt.load() if ckpt_on else None
            if resume is not None:
                source_trial = number
                break
        run = None
        if self.tracker is not None and self.parent_run is not None:
            link = {}
            if retry_history:
                link = {"harness.retry_of": str(retry_history[-1])}
                if "mlflow_run_id" in trial.user_attrs:  # inherited from the trial it retries
                    link["harness.retry_of_run"] = str(trial.user_attrs["mlflow_run_id"])
            run = self.tracker.trial_run(
                self.parent_run,
                trial.number,
                vars(params) | {"epochs": self.cfg.epochs, "seed": seed},
                extra_tags=link,
            )
            trial.set_user_attr("mlflow_run_id", run)
            self.tracker.log_json(run, self.prep.split.manifest, "split_manifest.json")
            self.tracker.log_json(run, self.cfg.to_dict(), "study_config.json")
        best = {"value": -math.inf, "epoch": 0}
        history: list[dict[str, float]] = []
        epochs = self.cfg.epochs
        clock = {"start": time.perf_counter(), "first": 0}  # ETA from the epochs this process ran

        def on_epoch(epoch: int, stats: dict[str, float]) -> None:
            history.append(stats)
            ran = epoch - clock["first"]
            left = (time.perf_counter() - clock["start"]) / max(ran, 1) * (epochs - epoch)
            progress_log.info(
                "trial %d: epoch %d/%d, val R@1 %.4f, %s img/s; ETA %s",
                trial.number,
                epoch,
                epochs,
                stats["val_recall@1"],
                f"{stats['train_img_per_s']:,.0f}",
                duration(left),
            )
            if run is not None:
                self.tracker.log_metrics(run, stats, step=epoch)  # type: ignore[union-attr]
            r1 = stats["val_recall@1"]
            if r1 > best["value"]:
                best.update(value=r1, epoch=epoch)
            trial.report(r1, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with val R@1 {r1:.4f}")

        if resume is not None:
            done = int(resume["epoch"])
            log.info("trial %d resumes trial %d after epoch %d", trial.number, source_trial, done)
            trial.set_user_attr("resumed_from", {"trial": source_trial, "epoch": done})
            self._event(trial.number, "resume", from_trial=source_trial, after_epoch=done)
        else:
            if stored and "resumed_from" in trial.user_attrs:  # inherited from the trial it retries
                trial.set_user_attr("resumed_from", None)
            self._event(trial.number, "start", retry_of=retry_history[-1] if retry_history else None)

        state = "FAIL"
        try:
            torch.manual_seed(seed)
            train_src, val_src = self.sources_for(
                params.train_blocks if self.cfg.trunk == "partial" else None
            )
            train_src.reseed(seed)
            model = build_model(self.prep, params, self.device, self.pool)
            if resume is not None:
                for h in resume["history"]:  # the pruner and MLflow see the epochs done before the kill
                    on_epoch(int(h["epoch"]), h)
                clock.update(start=time.perf_counter(), first=int(resume["epoch"]))
            train(
                model,
                params,
                train_src,
                self.cfg.epochs,
                self.device,
                seed=seed,
                val_src=val_src,
                on_epoch=on_epoch,
                resume=resume,
                on_checkpoint=checkpoint.save if ckpt_on else None,
                compile_mode=self.mode,
            )
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except TrainingDiverged as e:
            log.warning("trial %d failed: %s", trial.number, e)
            trial.set_user_attr("fail_reason", str(e))
            state = "DIVERGED"
            return math.nan  # Optuna records FAIL and the study goes on
        finally:
            # Every exit path ends the trial's records; on a full disk these writes may fail too,
            # and must not hide the error that ended the trial (the next sweep closes what is left).
            final = "FAIL" if state == "DIVERGED" else state
            try:
                if state != "FAIL":  # finished for good: its checkpoints are no longer needed
                    checkpoint.remove()
                    for ckpt in ancestors:
                        ckpt.remove()
                self._event(trial.number, "end", state=final)
            except OSError as e:
                log.warning("trial %d: could not write its end event (%s)", trial.number, e)
            try:
                self._summarise(trial, history, best, run, final)
            except Exception as e:
                log.warning("trial %d: could not end its records or MLflow run (%s)", trial.number, e)
        return best["value"]

    def _summarise(
        self, trial: optuna.Trial, history: list[dict[str, float]], best: dict, run: str | None, state: str
    ) -> None:
        if history:
            summary = {
                "best_epoch": best["epoch"],
                "train_img_per_s": sum(h["train_img_per_s"] for h in history) / len(history),
                "images_processed": history[-1]["images_processed"],
                "active_fraction": history[-1]["active_fraction"],
                "epochs_run": len(history),
                "host_load": max(h.get("host_load", float("nan")) for h in history),
                "host_cpus": history[-1].get("host_cpus", float("nan")),
                # validation R@1 against compute spent: offline mining's whole-set passes count
                "curve": [[h["images_processed"], h["val_recall@1"]] for h in history],
            }
            for k, v in summary.items():
                trial.set_user_attr(k, v)
            if run is not None and self.tracker is not None:
                self.tracker.log_metrics(
                    run, {"best_val_recall@1": best["value"], "best_epoch": best["epoch"]}
                )
        if run is not None and self.tracker is not None:
            self.tracker.end(run, state)
