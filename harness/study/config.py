"""Study configs: YAML validated against schema.json, then checked against the registries."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from harness.errors import ConfigError, unknown_name
from harness.names import DATASETS, DISTANCES, MINERS, TRAIN_CLASSES, carve_out

DEFAULTS: dict[str, Any] = {
    "description": "",
    "data_root": None,
    "download": False,
    "strict_counts": True,  # false only for subsets and generated fixtures
    "image_size": 128,
    "cache_size": None,
    "backbone": "efficientnet_lite0",
    "pretrained": True,
    "checkpoint": None,
    "trunk": "frozen",
    # trunk: partial: augmented views cached per training image (each epoch draws one), and their seed
    "partial": {"views": 4, "seed": 0},
    # the training step (harness.training.step): false = eager, true = one compiled graph + fused
    # AdamW, graphs = that plus CUDA graphs; auto = compiled only where measured faster (none yet)
    "compile": "auto",
    "epochs": 8,
    "val_fraction": 0.2,
    "seed": 0,
    "device": "auto",
    "workers": 1,
    "workers_per_gpu": 1,  # worker processes per worker job, sharing its device (small trials)
    "storage": None,
    "mlflow_uri": None,
    "results_dir": "results",
    "budget": {"n_trials": 20, "timeout": None},
    # dead workers: heartbeat every interval s, stale after grace_period s, re-queued max_retry times;
    # checkpoints: each trial saves its state every epoch under results/<study>/trials/<number>/
    "fault_tolerance": {"heartbeat_interval": 60, "grace_period": 180, "max_retry": 3, "checkpoints": True},
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 8},
    "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 2},
    # final evaluation: top_n configs + references (reference_margin x each mining), each with `seeds`
    # seeds from `seed`; 95 % intervals (bootstrap resamples when there is one seed)
    "evaluate": {
        "top_n": 3,
        "seed": 0,
        "seeds": 3,
        "references": True,
        "reference_margin": 0.2,
        "bootstrap": 2000,
        "jobs": 1,  # Snakemake jobs the evaluation runs are spread over (one process: no start-up cost)
    },
    "search_space": {},
}

# Values a trial uses for a parameter the search space leaves out.
PARAM_DEFAULTS: dict[str, Any] = {
    "margin": 0.2,
    "batch_p": 16,
    "batch_k": 4,
    "distance": "cosine",
    "mining": "semihard",
    "lr": 1e-4,
    "embedding_dim": 128,
    "weight_decay": 1e-4,
    "refresh_every": 1,
    # trunk: partial only
    "train_blocks": 1,
    "trunk_lr": 1e-5,
    "bn": "frozen",
}
PARTIAL_PARAMS = ("train_blocks", "trunk_lr", "bn")
BN_MODES = ("frozen", "train")

# Where to look when data_root is not set: the shared read-only copies, by dataset.
SHARED_COPIES = {"cub": "../shared/data/cub200-128"}


def _schema() -> dict:
    return json.loads(resources.files("harness.study").joinpath("schema.json").read_text())


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            _merge(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "search_space"
            else v
        )
    return out


def _schema_message(err: jsonschema.ValidationError, source: str) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "top level"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        keys = ", ".join(map(repr, extra))
        return f"{source}: unknown key {keys} at {where}; allowed keys: {', '.join(allowed)}"
    message = err.message
    if err.validator == "oneOf":
        kind = str(err.schema.get("$comment", "a value, a {low, high} range or {choices: [...]}"))
        message = f"{err.instance!r} is not {kind}"
    if isinstance(err.instance, str) and _looks_numeric(err.instance):
        message += f" ({yaml_number_hint(err.instance)})"
    return f"{source}: {where}: {message}"


def yaml_number_hint(text: str) -> str:
    """Why YAML gave a string for a number, and what to write instead.

    PyYAML (and so Snakemake) follows YAML 1.1: a float needs a dot, and an exponent needs a sign,
    so ``1e-3`` and ``1.0e6`` are text while ``1.0e-3`` and ``1.0e+6`` are floats.
    """
    value = float(text)
    if value.is_integer() and abs(value) < 1e15 and "." not in text.split("e")[0].split("E")[0]:
        fix = str(int(value))
    else:
        mantissa, exponent = f"{value:e}".split("e")
        mantissa = mantissa.rstrip("0")
        mantissa += "0" if mantissa.endswith(".") else ""
        fix = f"{mantissa}e{exponent[0]}{int(exponent[1:])}" if int(exponent[1:]) else mantissa
    if isinstance(yaml.safe_load(text), (int, float)):
        return f"YAML reads {text!r} as text because it is quoted: unquote it"
    why = "YAML 1.1 (PyYAML, Snakemake) needs a dot in a float and a sign in its exponent"
    return f"YAML reads {text!r} as text, not a number: {why}; write {fix}"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# What the trials of a study depend on: a stored study refuses a config that changes any of them.
PROTOCOL_KEYS = (
    "dataset",
    "backbone",
    "pretrained",
    "checkpoint",
    "trunk",
    "partial",
    "image_size",
    "cache_size",
    "epochs",
    "val_fraction",
    "seed",
    "search_space",
)


def protocol_keys(raw: dict) -> tuple[str, ...]:
    return tuple(k for k in PROTOCOL_KEYS if k != "partial" or raw.get("trunk") == "partial")


def protocol_changes(stored: dict, raw: dict) -> list[str]:
    """What differs between a stored study's config and this one, key by key: 'key: stored A, now B'."""
    out = []
    for k in dict.fromkeys(protocol_keys(stored) + protocol_keys(raw)):
        a, b = stored.get(k), raw.get(k)
        if k == "search_space" and isinstance(a, dict) and isinstance(b, dict):
            for p in sorted(set(a) | set(b)):
                if a.get(p) != b.get(p):
                    out.append(f"search_space.{p}: stored {_show(a.get(p))}, this config {_show(b.get(p))}")
        elif a != b:
            out.append(f"{k}: stored {_show(a)}, this config {_show(b)}")
    return out


def _show(v: Any) -> str:
    return (
        "(not set)" if v is None else json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)
    )


@dataclass(frozen=True)
class StudyConfig:
    name: str
    dataset: str
    raw: dict = field(repr=False)  # with defaults filled in
    user: dict = field(repr=False, default_factory=dict)  # as the user wrote it
    source: str = ""  # the file it was read from, for messages that name the command to run

    @property
    def command_path(self) -> str:
        """How to name this config in a command the user is told to run."""
        return self.source if self.source.endswith((".yaml", ".yml")) else "STUDY.yaml"

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["raw"][key]
        except KeyError as e:
            raise AttributeError(key) from e

    @property
    def results(self) -> Path:
        return Path(self.raw["results_dir"])

    @property
    def study_dir(self) -> Path:
        return self.results / self.name

    @property
    def cache_dir(self) -> Path:
        return self.results / "cache"

    @property
    def storage_url(self) -> str:
        """An SQLAlchemy URL, or ``journal:PATH`` for the default journal file."""
        return self.raw["storage"] or f"journal:{self.study_dir / 'optuna.journal'}"

    @property
    def tracking_uri(self) -> str:
        return self.raw["mlflow_uri"] or f"sqlite:///{(self.results / 'mlflow.db').resolve()}"

    @property
    def cache_px(self) -> int:
        return int(self.raw["cache_size"] or self.raw["image_size"])

    @property
    def fixed_params(self) -> dict[str, Any]:
        """Search-space entries given as a single value: not searched, but every trial uses them."""
        return {k: v for k, v in self.raw["search_space"].items() if not isinstance(v, dict)}

    def space_hash(self) -> str:
        """Identifies what the trials of a stored study mean; a mismatch must not be mixed in.
        (Keys a study's trunk does not use stay out, so adding one never changes older studies.)"""
        body = json.dumps({k: self.raw[k] for k in protocol_keys(self.raw)}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return copy.deepcopy(self.raw)


def param_values(spec: Any) -> list:
    """The values a search-space entry can take (a range's endpoints)."""
    if isinstance(spec, dict):
        return list(spec["choices"]) if "choices" in spec else [spec["low"], spec["high"]]
    return [spec]


def parse_config(data: dict, source: str = "config") -> StudyConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study config must be a mapping of keys to values")
    data = {k: v for k, v in data.items() if k != "studies"}  # Snakemake's default list, see Snakefile
    try:
        jsonschema.validate(data, _schema())
    except jsonschema.ValidationError as e:
        best = jsonschema.exceptions.best_match([e]) or e
        raise ConfigError(_schema_message(best, source)) from None
    raw = _merge(DEFAULTS, data)
    if raw["budget"]["n_trials"] is None and raw["budget"]["timeout"] is None:
        raise ConfigError(f"{source}: budget: set n_trials, timeout (seconds), or both")
    ft = raw["fault_tolerance"]
    if ft["grace_period"] <= ft["heartbeat_interval"]:
        raise ConfigError(
            f"{source}: fault_tolerance: grace_period {ft['grace_period']} must exceed heartbeat_interval"
            f" {ft['heartbeat_interval']} (Optuna suggests 2-3x), or live trials are failed as stale"
        )
    if raw["dataset"] not in DATASETS:
        raise ConfigError(f"{source}: {unknown_name('dataset', raw['dataset'], DATASETS)}")
    if raw["cache_size"] is not None and raw["cache_size"] < raw["image_size"]:
        raise ConfigError(
            f"{source}: cache_size {raw['cache_size']} < image_size {raw['image_size']}; the cache must"
            " hold the crop: raise cache_size or leave it null"
        )
    space = raw["search_space"]
    for key, known, kind in (("mining", MINERS, "miner"), ("distance", DISTANCES, "distance")):
        for v in param_values(space.get(key, PARAM_DEFAULTS[key])):
            if v not in known:
                raise ConfigError(
                    f"{source}: search_space.{key}: unknown {kind} {v!r}; known {kind}s: {', '.join(known)}"
                )
    _check_space(space, source)
    _check_partial(raw, source)
    if float(raw["evaluate"]["reference_margin"]) <= 0:
        raise ConfigError(
            f"{source}: evaluate.reference_margin: {raw['evaluate']['reference_margin']} is not > 0;"
            " a triplet margin must be positive"
        )
    _check_carve_out(raw, source)
    return StudyConfig(raw["name"], raw["dataset"], raw, copy.deepcopy(data), source)


# Every value a parameter may take, beyond what the schema's types say. A value outside these makes
# the trial crash (Optuna refuses a log range from 0) or train nothing (a margin <= 0), so it is
# refused here, before anything is written.
POSITIVE = {
    "margin": "a triplet margin must be positive (at 0 every correctly ordered triplet is loss-free)",
    "lr": "a learning rate must be positive",
    "trunk_lr": "a learning rate must be positive",
}
NON_NEGATIVE = {"weight_decay": "weight decay cannot be negative"}


def _check_space(space: dict, source: str) -> None:
    for key, spec in space.items():
        where = f"{source}: search_space.{key}"
        if isinstance(spec, dict) and "low" in spec:
            if spec["low"] > spec["high"]:
                raise ConfigError(f"{where}: low {spec['low']} > high {spec['high']}")
            if spec.get("log") and spec["low"] <= 0:
                raise ConfigError(
                    f"{where}: a log range needs low > 0, got low {spec['low']}; use a small positive"
                    " low (e.g. 1.0e-6) or drop log: true"
                )
            if spec.get("log") and spec.get("step") not in (None, 1):
                raise ConfigError(
                    f"{where}: step and log cannot be combined (Optuna samples a log range without a"
                    " step); drop one of them"
                )
        for v in param_values(spec):
            if key in POSITIVE and not v > 0:
                raise ConfigError(f"{where}: {v} is not > 0; {POSITIVE[key]}")
            if key in NON_NEGATIVE and not v >= 0:
                raise ConfigError(f"{where}: {v} is not >= 0; {NON_NEGATIVE[key]}")
    for key in ("batch_p", "batch_k"):
        lowest = min(param_values(space.get(key, PARAM_DEFAULTS[key])))
        if lowest < 2:
            raise ConfigError(f"{source}: search_space.{key}: values must be >= 2 for triplets, got {lowest}")


# Backbone name patterns with a stage structure models.partial can cut, and their stage counts
# (the trunk, once built, is checked again by its class).
PARTIAL_FAMILIES = (
    (("efficientnet_", "tf_efficientnet_"), 7, 0, "EfficientNet"),
    (("test_efficientnet",), 5, 0, "EfficientNet"),
    (("resnet", "test_resnet"), 4, 1, "ResNet"),
    (("convnext", "test_convnext"), 4, 0, "ConvNeXt"),
)


def _check_partial(raw: dict, source: str) -> None:
    space = raw["search_space"]
    if raw["trunk"] == "frozen" and 0 in param_values(
        space.get("embedding_dim", PARAM_DEFAULTS["embedding_dim"])
    ):
        raise ConfigError(
            f"{source}: search_space.embedding_dim: 0 (no projection) leaves nothing to train with trunk:"
            " frozen; use a dimension >= 1, or trunk: partial / finetune"
        )
    if raw["trunk"] != "partial":
        extra = [k for k in PARTIAL_PARAMS if k in space]
        if extra:
            raise ConfigError(
                f"{source}: search_space.{extra[0]} applies only to trunk: partial (trunk is {raw['trunk']})"
            )
        return
    for v in param_values(space.get("bn", PARAM_DEFAULTS["bn"])):
        if v not in BN_MODES:
            raise ConfigError(f"{source}: search_space.bn: unknown value {v!r}; known: {', '.join(BN_MODES)}")
    name = raw["backbone"]
    match = [f for f in PARTIAL_FAMILIES if name.startswith(f[0])]
    if not match:
        families = "; ".join(
            f"{fam} ({', '.join(p + '*' for p in pre)})" for pre, _, _, fam in PARTIAL_FAMILIES
        )
        raise ConfigError(
            f"{source}: trunk: partial needs a backbone with stages it can cut; {name!r} is not one of:"
            f" {families}"
        )
    _, n, low, fam = match[0]
    for v in param_values(space.get("train_blocks", PARAM_DEFAULTS["train_blocks"])):
        if not low <= int(v) <= n:
            raise ConfigError(
                f"{source}: search_space.train_blocks: {v} is outside {low}..{n}, the range for {name}"
                f" ({fam}, {n} stages; 0 trains only the layers after the last stage)"
            )


def check_carve_out(n_train_classes: int, val_fraction: float, widest_p: int, where: str) -> None:
    """The classes left after the validation carve-out must fill the widest batch (P classes)."""
    n_fit, n_val = carve_out(n_train_classes, val_fraction)
    if n_fit < max(2, widest_p):
        most = (n_train_classes - max(2, widest_p)) / n_train_classes
        raise ConfigError(
            f"{where}: val_fraction {val_fraction} makes {n_val} of the {n_train_classes} training classes"
            f" validation classes, leaving {n_fit} to train on, but search_space.batch_p reaches"
            f" {widest_p}; lower val_fraction (at most {max(most, 0):.2f}) or batch_p"
        )


def _check_carve_out(raw: dict, source: str) -> None:
    if not raw["strict_counts"]:  # a subset: checked against the classes present when data is loaded
        return
    widest = max(param_values(raw["search_space"].get("batch_p", PARAM_DEFAULTS["batch_p"])))
    check_carve_out(TRAIN_CLASSES[raw["dataset"]], float(raw["val_fraction"]), int(widest), source)


def searched(cfg: StudyConfig) -> list[str]:
    """The parameters the sampler varies (a range, or more than one choice)."""
    return [
        k
        for k, spec in cfg.search_space.items()
        if isinstance(spec, dict)
        and ("low" in spec and spec["high"] > spec["low"] or len(spec.get("choices", [])) > 1)
    ]


def evaluation_seeds(cfg: StudyConfig) -> list[int]:
    first = int(cfg.evaluate["seed"])
    return [first + i for i in range(int(cfg.evaluate["seeds"]))]


def evaluation_units(cfg: StudyConfig) -> list[str]:
    """Every run of a study's final evaluation, from its config alone: ``baseline``, then per seed
    ``top{rank}-s{seed}`` and ``ref-{mining}-s{seed}``. A rank beyond the distinct complete trials
    is skipped when the evaluation runs."""
    keys = ["baseline"]
    minings = param_values(cfg.search_space.get("mining", PARAM_DEFAULTS["mining"]))
    for seed in evaluation_seeds(cfg):
        keys += [f"top{r}-s{seed}" for r in range(1, int(cfg.evaluate["top_n"]) + 1)]
        if cfg.evaluate["references"]:
            keys += [f"ref-{m}-s{seed}" for m in minings]
    return keys


def evaluation_shard(cfg: StudyConfig, shard: int) -> list[str]:
    """The runs of shard ``shard`` (0-based) of ``evaluate.jobs``: round robin over the runs."""
    jobs = int(cfg.evaluate["jobs"])
    if not 0 <= shard < jobs:
        raise ConfigError(
            f"evaluation shard {shard} does not exist; evaluate.jobs is {jobs} (shards 0-{jobs - 1})"
        )
    return evaluation_units(cfg)[shard::jobs]


def config_warnings(cfg: StudyConfig, manifest: dict | None = None) -> list[str]:
    """Legal but probably unintended settings: logged by every command and shown in the report.
    With the split manifest, also those that depend on the data (images per class)."""
    out = []
    if manifest and "min_images_per_class" in manifest:
        k = max(param_values(cfg.search_space.get("batch_k", PARAM_DEFAULTS["batch_k"])))
        fewest = int(manifest["min_images_per_class"]["train"])
        if k > fewest:
            out.append(
                f"batch_k reaches {k}, but some training class has only {fewest} images: its batches repeat"
                " images (sampled with replacement), which adds zero-distance positive pairs"
            )
    n = cfg.budget["n_trials"]
    if not searched(cfg) and (n is None or n > 1):
        out.append(
            f"search_space varies nothing: every trial runs the same config (only the seed differs), so"
            f" {n or 'all'} trials measure seed variance, and evaluate keeps one copy of the config"
        )
    return out


def load_config(path: str | Path) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study config {path} does not exist; see studies/ for examples")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_config(data, str(path))


def write_config(cfg: StudyConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
