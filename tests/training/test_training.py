"""The training loop on synthetic frozen-trunk features, and the objective's parameter suggestions."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch

from harness.models import EmbeddingHead
from harness.params import TrialParams, defaults
from harness.study.config import SearchSpace, to_spec
from harness.study.objective import suggest_params
from harness.training import FeatureSource, ImageSource, TrainingDiverged, evaluate_source, train
from harness.training.checkpoint import TrialCheckpoint

CPU = torch.device("cpu")
N_CLASSES, PER_CLASS, N_TRAIN, DIM = 6, 24, 16, 16


def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """6 classes whose identity lives in 4 of 16 dims; the other 12 are large nuisance noise.

    Raw features retrieve poorly (the noise dominates), so a high R@1 means the head learned to
    ignore the nuisance dims. Returns features, labels, train indices, val indices.
    """
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(N_CLASSES, 4))
    signal = np.repeat(centres, PER_CLASS, 0) + rng.normal(scale=0.1, size=(N_CLASSES * PER_CLASS, 4))
    noise = rng.normal(scale=0.7, size=(N_CLASSES * PER_CLASS, DIM - 4))
    feats = np.concatenate([signal, noise], 1).astype(np.float32)
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    train_idx = np.concatenate([np.arange(c * PER_CLASS, c * PER_CLASS + N_TRAIN) for c in range(N_CLASSES)])
    val_idx = np.setdiff1d(np.arange(N_CLASSES * PER_CLASS), train_idx)
    return feats, labels, train_idx, val_idx


FEATS, LABELS, TRAIN_IDX, VAL_IDX = blobs()
N_TRAIN_IMAGES = len(TRAIN_IDX)  # 96
P, K = 3, 4  # 8 batches of 12 per epoch


def sources(feats: np.ndarray = FEATS) -> tuple[FeatureSource, FeatureSource]:
    return FeatureSource(feats, LABELS, TRAIN_IDX, CPU), FeatureSource(feats, LABELS, VAL_IDX, CPU)


def params(mining: str, distance: str = "cosine", **kw: float) -> TrialParams:
    base = dict(margin=0.2, batch_p=P, batch_k=K, distance=distance, mining=mining, lr=3e-2, embedding_dim=8)
    return TrialParams(**(base | kw))  # type: ignore[arg-type]


def head(seed: int = 0) -> EmbeddingHead:
    torch.manual_seed(seed)
    return EmbeddingHead(DIM, 8)


STAT_KEYS = {
    "epoch",
    "loss",
    "train_img_per_s",
    "step_time_ms",
    "data_s",
    "forward_s",
    "mine_s",
    "loss_backward_s",
    "offline_mine_s",
    "active_fraction",
    "triplets_per_step",
    "images_processed",
}


@pytest.mark.parametrize("mining", ["semihard", "batch-hard", "random", "distance-weighted", "offline-hard"])
def test_history_has_one_full_dict_per_epoch(mining: str) -> None:
    train_src, val_src = sources()
    seen: list[tuple[int, dict[str, float]]] = []
    history = train(
        head(), params(mining), train_src, 3, CPU, val_src=val_src, on_epoch=lambda e, s: seen.append((e, s))
    )
    assert len(history) == 3
    assert [e for e, _ in seen] == [1, 2, 3] and [s for _, s in seen] == history
    for epoch, stats in enumerate(history, start=1):
        assert STAT_KEYS | {"val_recall@1"} <= set(stats)
        assert stats["epoch"] == epoch
        assert all(isinstance(v, float) and math.isfinite(v) for v in stats.values())
        assert 0.0 <= stats["active_fraction"] <= 1.0
        assert 0.0 <= stats["val_recall@1"] <= 1.0
        assert stats["train_img_per_s"] > 0 and stats["triplets_per_step"] > 0
        for key in ("data_s", "forward_s", "mine_s", "loss_backward_s"):
            assert stats[key] >= 0.0
    assert (history[0]["offline_mine_s"] > 0) == mining.startswith("offline-")


def test_no_val_keys_without_val_source() -> None:
    train_src, _ = sources()
    (stats,) = train(head(), params("semihard"), train_src, 1, CPU)
    assert not [k for k in stats if k.startswith("val_")]


def test_images_processed_online() -> None:
    train_src, _ = sources()
    history = train(head(), params("semihard"), train_src, 3, CPU)
    assert [h["images_processed"] for h in history] == [96.0, 192.0, 288.0]


@pytest.mark.parametrize("refresh_every, expected", [(1, [192.0, 384.0, 576.0]), (2, [192.0, 288.0, 480.0])])
def test_images_processed_offline_counts_the_embedding_pass(
    refresh_every: int, expected: list[float]
) -> None:
    """Each refresh embeds all 96 training images, on top of the 96 images the steps process."""
    train_src, _ = sources()
    history = train(head(), params("offline-hard", refresh_every=refresh_every), train_src, 3, CPU)
    assert [h["images_processed"] for h in history] == expected
    assert [h["triplets_per_step"] for h in history] == [4.0] * 3  # batch of 12 images = 4 triplets
    refreshed = [h["offline_mine_s"] > 0 for h in history]
    assert refreshed == ([True] * 3 if refresh_every == 1 else [True, False, True])


def test_triplets_per_step_online_all_pairs() -> None:
    """The random miner yields one triplet per ordered positive pair: P * K * (K - 1) per batch."""
    train_src, _ = sources()
    (stats,) = train(head(), params("random"), train_src, 1, CPU)
    assert stats["triplets_per_step"] == P * K * (K - 1)


@pytest.mark.parametrize(
    "mining, distance",
    [
        ("semihard", "cosine"),
        ("all", "euclidean"),
        ("random", "squared_euclidean"),
        ("offline-semihard", "cosine"),
    ],
)
def test_training_learns_to_separate_blobs(mining: str, distance: str) -> None:
    train_src, val_src = sources()
    model = head()
    before = evaluate_source(model, val_src, distance, CPU)["recall@1"]
    history = train(model, params(mining, distance), train_src, 20, CPU, val_src=val_src)
    assert before < 0.8  # the task is not solved by a random projection
    assert history[-1]["val_recall@1"] > 0.9
    assert history[-1]["loss"] < history[0]["loss"]


def test_training_is_deterministic_for_a_seed() -> None:
    train_src, _ = sources()
    runs = []
    for seed in (3, 3, 4):
        model = head()
        history = train(model, params("random"), train_src, 2, CPU, seed=seed)
        runs.append(([h["loss"] for h in history], model.fc.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]


@pytest.mark.parametrize("mining", ["semihard", "random", "offline-hard"])
def test_nan_features_raise_training_diverged(mining: str) -> None:
    feats = FEATS.copy()
    feats[:] = np.nan
    train_src, _ = sources(feats)
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train(head(), params(mining), train_src, 2, CPU)


# --- objective: suggest_params ---------------------------------------------------------------------

PARAM_DEFAULTS = defaults("frozen")


def space(raw: dict, trunk: str = "frozen") -> SearchSpace:
    return SearchSpace({k: to_spec(v) for k, v in raw.items()}, trunk)


SPACE = space(
    {
        "margin": {"low": 0.05, "high": 0.5},
        "batch_p": {"low": 2, "high": 8},
        "distance": {"choices": ["cosine", "euclidean"]},
        "mining": {"choices": ["semihard", "batch-hard", "offline-hard", "offline-random"]},
        "lr": {"low": 1e-5, "high": 1e-2, "log": True},
        "refresh_every": {"low": 1, "high": 4},
    }
)


def test_suggest_params_with_fixed_trial_offline() -> None:
    trial = optuna.trial.FixedTrial(
        {
            "margin": 0.3,
            "batch_p": 4,
            "distance": "euclidean",
            "mining": "offline-hard",
            "lr": 1e-3,
            "refresh_every": 3,
        }
    )
    p = suggest_params(trial, SPACE)
    assert p == TrialParams(
        margin=0.3,
        batch_p=4,
        batch_k=PARAM_DEFAULTS["batch_k"],
        distance="euclidean",
        mining="offline-hard",
        lr=1e-3,
        embedding_dim=PARAM_DEFAULTS["embedding_dim"],
        weight_decay=PARAM_DEFAULTS["weight_decay"],
        refresh_every=3,
    )
    assert isinstance(p.batch_p, int) and isinstance(p.refresh_every, int)


def test_suggest_params_with_fixed_trial_online_ignores_refresh_every() -> None:
    trial = optuna.trial.FixedTrial(
        {
            "margin": 0.1,
            "batch_p": 2,
            "distance": "cosine",
            "mining": "semihard",
            "lr": 1e-4,
            "refresh_every": 3,
        }
    )
    p = suggest_params(trial, SPACE)
    assert p.mining == "semihard" and p.refresh_every == 1 and p.margin == 0.1


def test_suggest_params_fixed_values_are_not_searched() -> None:
    trial = optuna.trial.FixedTrial({})
    p = suggest_params(trial, space({"mining": "offline-random", "refresh_every": 2, "margin": 0.4}))
    assert (p.mining, p.refresh_every, p.margin) == ("offline-random", 2, 0.4)
    assert p.batch_p == PARAM_DEFAULTS["batch_p"] and p.distance == PARAM_DEFAULTS["distance"]


def test_refresh_every_is_suggested_only_for_offline_mining() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    chosen: list[TrialParams] = []

    def objective(trial: optuna.Trial) -> float:
        chosen.append(suggest_params(trial, SPACE))
        return 0.0

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study.optimize(objective, n_trials=30)
    finally:
        optuna.logging.set_verbosity(verbosity)
    kinds = set()
    for trial, p in zip(study.trials, chosen):
        offline = p.mining.startswith("offline-")
        kinds.add(offline)
        assert ("refresh_every" in trial.params) == offline
        assert set(trial.params) - {"refresh_every"} == {"margin", "batch_p", "distance", "mining", "lr"}
        assert trial.params["mining"] == p.mining
        if offline:
            assert trial.params["refresh_every"] == p.refresh_every and 1 <= p.refresh_every <= 4
        else:
            assert p.refresh_every == 1
        assert 0.05 <= p.margin <= 0.5 and 2 <= p.batch_p <= 8 and 1e-5 <= p.lr <= 1e-2
    assert kinds == {True, False}


# --- checkpoints: a resumed trial takes the same path as an uninterrupted one -----------------------


def _image_source() -> ImageSource:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(N_CLASSES * PER_CLASS, 20, 20, 3), dtype=np.uint8)
    return ImageSource(images, LABELS, TRAIN_IDX, 16, (0.5,) * 3, (0.5,) * 3, CPU, seed=5)


def _conv_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        EmbeddingHead(4, 8),
    )


@pytest.mark.parametrize(
    "mining, make_source, make_model",
    [
        ("random", lambda: sources()[0], head),
        ("distance-weighted", lambda: sources()[0], head),
        ("offline-random", lambda: sources()[0], head),
        ("semihard", _image_source, _conv_model),
    ],
)
def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(
    mining: str, make_source, make_model, tmp_path
) -> None:
    p = params(mining, refresh_every=2) if mining.startswith("offline-") else params(mining)
    straight = make_model()
    full = train(straight, p, make_source(), 4, CPU, seed=7)

    ckpt = TrialCheckpoint(tmp_path / "trial" / "checkpoint.pt")
    killed = make_model()
    # "dies" after epoch 1: with refresh_every=2 the offline pool mined in epoch 1 must be restored
    train(killed, p, make_source(), 1, CPU, seed=7, on_checkpoint=ckpt.save)
    state = ckpt.load()
    assert state is not None and state["epoch"] == 1

    resumed = make_model()  # a fresh process: new weights, new RNG state, new source
    torch.manual_seed(123)
    seen: list[int] = []
    history = train(
        resumed, p, make_source(), 4, CPU, seed=7, resume=state, on_epoch=lambda e, s: seen.append(e)
    )
    assert seen == [2, 3, 4]  # only the epochs that were not done yet
    assert [h["loss"] for h in history] == [h["loss"] for h in full]
    assert [h["images_processed"] for h in history] == [h["images_processed"] for h in full]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_unreadable_checkpoint_means_train_from_scratch(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a torch file")
    assert TrialCheckpoint(path).load() is None
    assert TrialCheckpoint(tmp_path / "absent.pt").load() is None


@pytest.mark.parametrize("mining", ["offline-hard", "semihard"])
def test_frozen_batchnorm_stays_frozen_through_the_offline_pass_and_validation(mining: str) -> None:
    """bn: frozen keeps the pretrained statistics for the whole trial: the offline miner's whole-set
    pass and the per-epoch validation switch the model to eval and back, module by module."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(DIM), EmbeddingHead(DIM, 8))
    bn = model[0]
    bn.running_mean.fill_(0.5)  # "pretrained" statistics, far from the data's
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    train_src, val_src = sources()
    train(model, params(mining, bn="frozen"), train_src, 2, CPU, val_src=val_src)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == before[2]
    # and in train mode the statistics do move: the check above can fail
    train(model, params(mining, bn="train"), train_src, 1, CPU)
    assert not torch.equal(bn.running_mean, before[0])
