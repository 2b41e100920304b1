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

from harness.data import DATASETS
from harness.errors import ConfigError, unknown_name
from harness.losses import DISTANCES
from harness.mining import MINERS

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
    "compile": "auto",  # torch.compile the fine-tuned trunk: auto = on GPU only
    "epochs": 8,
    "val_fraction": 0.2,
    "seed": 0,
    "device": "auto",
    "workers": 1,
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
}

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
        message += f" (YAML reads {err.instance!r} as text: unquote it; floats need a dot, e.g. 1.0e-3)"
    return f"{source}: {where}: {message}"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class StudyConfig:
    name: str
    dataset: str
    raw: dict = field(repr=False)  # with defaults filled in
    user: dict = field(repr=False, default_factory=dict)  # as the user wrote it

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
        """Identifies what the trials of a stored study mean; a mismatch must not be mixed in."""
        keys = (
            "dataset",
            "backbone",
            "pretrained",
            "checkpoint",
            "trunk",
            "image_size",
            "cache_size",
            "epochs",
            "val_fraction",
            "seed",
            "search_space",
        )
        body = json.dumps({k: self.raw[k] for k in keys}, sort_keys=True, default=str)
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
        raise ConfigError(f"{source}: {unknown_name('dataset', raw['dataset'], list(DATASETS))}")
    if raw["cache_size"] is not None and raw["cache_size"] < raw["image_size"]:
        raise ConfigError(
            f"{source}: cache_size {raw['cache_size']} < image_size {raw['image_size']}; the cache must"
            " hold the crop: raise cache_size or leave it null"
        )
    space = raw["search_space"]
    for key, known, kind in (("mining", MINERS, "miner"), ("distance", tuple(DISTANCES), "distance")):
        for v in param_values(space.get(key, PARAM_DEFAULTS[key])):
            if v not in known:
                raise ConfigError(
                    f"{source}: search_space.{key}: unknown {kind} {v!r}; known {kind}s: {', '.join(known)}"
                )
    for key, spec in space.items():
        if isinstance(spec, dict) and "low" in spec and spec["low"] > spec["high"]:
            raise ConfigError(f"{source}: search_space.{key}: low {spec['low']} > high {spec['high']}")
    for key in ("batch_p", "batch_k"):
        lowest = min(param_values(space.get(key, PARAM_DEFAULTS[key])))
        if lowest < 2:
            raise ConfigError(f"{source}: search_space.{key}: values must be >= 2 for triplets, got {lowest}")
    return StudyConfig(raw["name"], raw["dataset"], raw, copy.deepcopy(data))


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
