"""Study configs: YAML validated once, in one place, into a typed, frozen ``StudyConfig``.

``parse_config`` checks a config completely before anything heavy is imported or written: the JSON
schema (``schema.json``, the user-facing contract; its ``search_space`` part and its trunk names
come from ``harness.params`` and the trunk registry), then every value against the hyperparameter
table and the registries, then the cross-field rules. Everything after it receives a config that
is valid; what can only be checked against the data or the model (a subset's class count, a
backbone's stages) is checked where those are loaded.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from harness.data.splits import carve_out
from harness.errors import ConfigError, unknown_name
from harness.params import TABLE, TRUNK_MODES, Number
from harness.registry import DATASETS

# --- the sections ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    n_trials: int | None = 20
    timeout: float | None = None  # seconds, per worker
    images: float | None = None  # images processed by all trials together (offline passes counted)


@dataclass(frozen=True)
class FaultTolerance:
    """Dead workers: heartbeat every interval s, stale after grace_period s, re-queued max_retry times;
    checkpoints: each trial saves its state every epoch under results/<study>/trials/<number>/."""

    heartbeat_interval: int = 60
    grace_period: int = 180
    max_retry: int = 3
    checkpoints: bool = True


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "tpe"
    seed: int = 0
    n_startup_trials: int = 8


@dataclass(frozen=True)
class PrunerConfig:
    name: str = "median"  # median | hyperband | successive_halving | none
    n_startup_trials: int = 5
    n_warmup_steps: int = 2
    min_resource: int = 1  # hyperband / successive_halving: epochs before the first rung
    reduction_factor: int = 3  # ... and 1 in this many trials goes on at each rung


@dataclass(frozen=True)
class Evaluate:
    """The final evaluation: top_n configs + references (reference_margin x each mining), each with
    ``seeds`` seeds from ``seed``; 95 % intervals (bootstrap resamples when there is one seed)."""

    top_n: int = 3
    seed: int = 0
    seeds: int = 3
    references: bool = True
    reference_margin: float = 0.2
    bootstrap: int = 2000
    jobs: int = 1  # Snakemake jobs the evaluation runs are spread over
    export: str = "best"  # TorchScript + ONNX of: the best config's seeds | all final runs | none
    knn: str = "torch"  # the test kNN: torch | faiss (exact; pip install faiss-cpu) | auto
    nmi_max_images: int = 10_000  # above it NMI clusters a seeded sample of whole classes (SOP: 60,502)

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


@dataclass(frozen=True)
class Partial:
    """trunk: partial: augmented views cached per training image (each epoch draws one), their seed."""

    views: int = 4
    seed: int = 0


# --- the search space ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixed:
    value: Any

    def values(self) -> list:
        return [self.value]


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def values(self) -> list:
        """Its endpoints (what a check of every value needs)."""
        return [self.low, self.high]

    def grid(self) -> list[int]:
        """Every integer it reaches (an integer range)."""
        return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))


@dataclass(frozen=True)
class Choices:
    options: tuple

    def values(self) -> list:
        return list(self.options)


Spec = Fixed | Range | Choices


def to_spec(raw: Any) -> Spec:
    if isinstance(raw, dict) and "choices" in raw:
        return Choices(tuple(raw["choices"]))
    if isinstance(raw, dict):
        return Range(raw["low"], raw["high"], bool(raw.get("log", False)), raw.get("step"))
    return Fixed(raw)


@dataclass(frozen=True)
class SearchSpace:
    """What the sampler may vary, per hyperparameter of the table (``harness.params``); a parameter the
    space leaves out takes the table's default (its neutral value where the trunk does not use it)."""

    specs: Mapping[str, Spec]
    trunk: str

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def spec(self, name: str) -> Spec:
        if name in self.specs:
            return self.specs[name]
        p = TABLE[name]
        return Fixed(p.default if p.applies(self.trunk) else p.off)

    def values(self, name: str) -> list:
        """The values ``name`` can take (a range's endpoints)."""
        return self.spec(name).values()

    def integers(self, name: str) -> list[int]:
        """Every value an integer parameter can take, sorted."""
        s = self.spec(name)
        return s.grid() if isinstance(s, Range) else sorted({int(v) for v in s.values()})

    @property
    def fixed(self) -> dict[str, Any]:
        """Entries given as a single value: not searched, but every trial uses them."""
        return {k: s.value for k, s in self.specs.items() if isinstance(s, Fixed)}

    def searched(self) -> list[str]:
        """The parameters the sampler varies (a range, or more than one choice)."""
        return [
            k
            for k, s in self.specs.items()
            if (isinstance(s, Range) and s.high > s.low) or (isinstance(s, Choices) and len(s.options) > 1)
        ]


# --- the config ------------------------------------------------------------------------------------

MANIFEST = "split_manifest.json"
TRACKING_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql", "http://", "https://")
ARM_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # an arm's name: a folder and a study name
# compare: backbone makes each backbone of a list an arm (every other compare: a search-space key)
COMPARE_BACKBONE = "backbone"


@dataclass(frozen=True)
class StudyConfig:
    name: str
    dataset: str
    description: str = ""
    data_root: str | None = None
    download: bool = False
    strict_counts: bool = True  # false only for subsets and generated fixtures
    # a dataset of the user's own without its own split: test classes drawn apart from ``seed``
    test_fraction: float = 0.5
    split_seed: int = 0
    split_file: str | None = None  # dataset: folder: each class's split
    class_disjoint: bool = True  # dataset: csv: false lets the given splits share classes
    image_size: int = 128
    cache_size: int | None = None
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    checkpoint: str | None = None
    # backbones scored on the test classes without any training, beside the study's own (zero-shot rows)
    baselines: list[str] = field(default_factory=list)
    trunk: str = "frozen"
    partial: Partial = field(default_factory=Partial)
    # the training step (harness.training.step): false = eager, true = one compiled graph + fused
    # AdamW, graphs = that plus CUDA graphs; auto = compiled only where measured faster
    compile: bool | str = "auto"
    epochs: int = 8
    val_fraction: float = 0.2
    # class-disjoint k-fold validation on the training classes (1: the val_fraction carve-out)
    val_folds: int = 1
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    workers_per_gpu: int = 1  # worker processes per worker job, sharing its device (small trials)
    storage: str | None = None
    mlflow_uri: str | None = None
    results_dir: str = "results"
    budget: Budget = field(default_factory=Budget)
    fault_tolerance: FaultTolerance = field(default_factory=FaultTolerance)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    evaluate: Evaluate = field(default_factory=Evaluate)
    search_space: SearchSpace = field(default_factory=lambda: SearchSpace({}, "frozen"))
    # a hyperparameter whose choices become arms: one study each, with equal budgets (harness.study.arms)
    compare: str | None = None
    # a comparison searches each arm this many times, with independent sampler streams
    search_repeats: int = 1
    arm: str | None = None  # set on an arm's own config: the value of ``compare`` it fixes
    parent: str | None = None  # ... and the comparison study it belongs to
    repeat: int = 0  # ... and which of its search repeats it is
    raw: dict = field(repr=False, default_factory=dict)  # with defaults filled in: hashed, stored
    user: dict = field(repr=False, default_factory=dict)  # as the user wrote it
    source: str = ""  # the file it was read from, for messages that name the command to run

    @property
    def command_path(self) -> str:
        """How to name this config in a command the user is told to run."""
        return self.source if self.source.endswith((".yaml", ".yml")) else "STUDY.yaml"

    def dataset_spec(self) -> Any:
        """The study's dataset loader, built with the config keys it takes (``folder``: split_file)."""
        from harness.data import get_dataset

        cls = DATASETS.get(self.dataset)
        return get_dataset(self.dataset, **{k: getattr(self, k) for k in cls.options})

    @property
    def results(self) -> Path:
        return Path(self.results_dir)

    @property
    def study_dir(self) -> Path:
        """results/{study}/; an arm's is results/{comparison}/arms/{unit}/ (``unit``: the arm, or its
        search repeat r >= 1 as {arm}@r{r})."""
        if self.parent is not None:
            return self.results / self.parent / "arms" / str(self.unit)
        return self.results / self.name

    @property
    def experiment(self) -> str:
        """The MLflow experiment: the study's name (an arm's: its comparison's)."""
        return self.parent or self.name

    @property
    def manifest_path(self) -> Path:
        """The split manifest: which classes each split holds (written by prepare, read by all; an
        arm shares its comparison's)."""
        home = self.results / self.parent if self.parent is not None else self.study_dir
        return home / MANIFEST

    @property
    def arms(self) -> list[str]:
        """The arms of a comparison (``compare``'s choices, as names), else none."""
        return list(arm_values(self.raw))

    @property
    def arm_units(self) -> list[str]:
        """The studies a comparison runs: each arm's search repeats (``search_repeats``), by name."""
        return [unit_name(a, r) for a in self.arms for r in range(self.search_repeats)]

    @property
    def unit(self) -> str | None:
        """An arm's study's own name within its comparison: the arm, or ``{arm}@r{repeat}``."""
        return None if self.arm is None else unit_name(self.arm, self.repeat)

    @property
    def backbones(self) -> list[str]:
        """The backbones the study trains: its own, or (``compare: backbone``) one per arm."""
        listed = self.raw.get("backbone")
        return [str(b) for b in listed] if isinstance(listed, list) else [self.backbone]

    def weights_wanted(self) -> list[tuple[str, bool, str | None]]:
        """(backbone, pretrained, checkpoint) of every model the study loads: what it trains (every
        arm's) and its zero-shot baselines (pretrained weights, always)."""
        out = [(b, self.pretrained, self.checkpoint) for b in self.backbones]
        out += [(b, True, None) for b in self.baselines if (b, True, None) not in out]
        return list(dict.fromkeys(out))

    @property
    def cache_dir(self) -> Path:
        return self.results / "cache"

    @property
    def storage_url(self) -> str:
        """An SQLAlchemy URL, or ``journal:PATH`` for the default journal file."""
        return self.storage or f"journal:{self.study_dir / 'optuna.journal'}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_uri or f"sqlite:///{(self.results / 'mlflow.db').resolve()}"

    @property
    def cache_px(self) -> int:
        return int(self.cache_size or self.image_size)

    def space_hash(self) -> str:
        """Identifies what the trials of a stored study mean; a mismatch must not be mixed in.
        (Keys a study's trunk does not use stay out, so adding one never changes older studies.)"""
        body = json.dumps({k: self.raw[k] for k in protocol_keys(self.raw)}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return copy.deepcopy(self.raw)


SECTIONS = {
    "partial": Partial,
    "budget": Budget,
    "fault_tolerance": FaultTolerance,
    "sampler": SamplerConfig,
    "pruner": PrunerConfig,
    "evaluate": Evaluate,
}
REQUIRED = ("name", "dataset")
BOOKKEEPING = ("raw", "user", "source", "arm", "parent", "repeat")
REPEAT_MARK = "@r"  # an arm's search repeat r >= 1 is the study {arm}@r{r} (arm names hold no @)


def unit_name(arm: str, repeat: int) -> str:
    """Repeat 0 keeps the arm's own name: a comparison made before search repeats reads as it was."""
    return arm if repeat == 0 else f"{arm}{REPEAT_MARK}{repeat}"


def split_unit(unit: str) -> tuple[str, int]:
    """(arm, repeat) of a unit name (``unit_name``'s inverse)."""
    arm, mark, r = unit.rpartition(REPEAT_MARK)
    return (arm, int(r)) if mark and r.isdigit() else (unit, 0)


def _defaults() -> dict[str, Any]:
    """Every optional key's default, as the YAML would write it (the frozen config holds them all)."""
    out: dict[str, Any] = {}
    for f in fields(StudyConfig):
        if f.name in REQUIRED or f.name in BOOKKEEPING:
            continue
        if f.name in SECTIONS:
            out[f.name] = asdict(SECTIONS[f.name]())
        elif f.name == "search_space":
            out[f.name] = {}
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = f.default
    return out


DEFAULTS: dict[str, Any] = _defaults()


def arm_values(raw: dict) -> dict[str, Any]:
    """A comparison's arms, by name, with the value each fixes (empty: not a comparison), from a
    config dict: this one, or the one a stored comparison was created with."""
    compare = raw.get("compare")
    if not compare:
        return {}
    if compare == COMPARE_BACKBONE:
        listed = raw.get("backbone")
        return {str(b): b for b in listed} if isinstance(listed, list) else {}
    spec = (raw.get("search_space") or {}).get(compare)
    return {} if spec is None else {str(v): v for v in to_spec(spec).values()}


def build(raw: dict, user: dict, source: str) -> StudyConfig:
    """The typed config of a validated ``raw`` dict (defaults filled in; a comparison of backbones
    is typed by its first, its whole list staying in ``raw``)."""
    kw: dict[str, Any] = {k: v for k, v in raw.items() if k not in SECTIONS and k != "search_space"}
    if isinstance(kw["backbone"], list):
        kw["backbone"] = str(kw["backbone"][0])
    kw |= {k: cls(**raw[k]) for k, cls in SECTIONS.items()}
    space = {k: to_spec(v) for k, v in raw["search_space"].items()}
    kw["search_space"] = SearchSpace(space, raw["trunk"])
    return StudyConfig(**kw, raw=raw, user=user, source=source)


# --- schema ----------------------------------------------------------------------------------------


def schema() -> dict:
    """``schema.json``, with the search space's keys from the hyperparameter table and the trunk
    modes from ``harness.params``: the one list of each."""
    s = json.loads(resources.files("harness.study").joinpath("schema.json").read_text())
    s["properties"]["search_space"]["properties"] = {
        p.name: {"$ref": f"#/definitions/{p.domain.schema_ref}"} for p in TABLE.values()
    }
    s["properties"]["trunk"] = s["properties"]["trunk"] | {"enum": list(TRUNK_MODES)}
    return s


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


# --- what a stored study depends on ----------------------------------------------------------------

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


# Keys added later enter a study's identity only when set away from their default, so the hash of
# every study created before them stays what it was.
LATER_PROTOCOL_KEYS = {
    "val_folds": 1,
    "compare": None,
    "test_fraction": 0.5,
    "split_seed": 0,
    "split_file": None,
    "class_disjoint": True,
}


# A config section that belongs to some trunk modes only (its own trunk mode's settings): it is part
# of a study's identity only in those.
SECTION_TRUNKS: dict[str, tuple[str, ...]] = {"partial": ("partial",)}


def protocol_keys(raw: dict) -> tuple[str, ...]:
    keys = tuple(k for k in PROTOCOL_KEYS if raw.get("trunk") in SECTION_TRUNKS.get(k, (raw.get("trunk"),)))
    return keys + tuple(k for k, default in LATER_PROTOCOL_KEYS.items() if raw.get(k, default) != default)


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


# --- validation: once, here ------------------------------------------------------------------------


def parse_config(data: Any, source: str = "config") -> StudyConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a study config must be a mapping of keys to values")
    data = {k: v for k, v in data.items() if k != "studies"}  # Snakemake's default list, see Snakefile
    try:
        jsonschema.validate(data, schema())
    except jsonschema.ValidationError as e:
        best = jsonschema.exceptions.best_match([e]) or e
        raise ConfigError(_schema_message(best, source)) from None
    raw = _merge(DEFAULTS, data)
    _check_sections(raw, source)
    cfg = build(raw, copy.deepcopy(data), source)
    _check_space(cfg, source)
    _check_compare(cfg, source)
    # (a frozen config carries every default: the default fraction beside folds is not the user's)
    if cfg.val_folds > 1 and data.get("val_fraction") not in (None, DEFAULTS["val_fraction"]):
        raise ConfigError(
            f"{source}: val_fraction {data['val_fraction']} and val_folds {cfg.val_folds} are both set: with"
            " k folds every training class validates once (1/k of them per fold) and val_fraction does"
            " not apply; remove val_fraction, or set val_folds: 1 to carve out that fraction"
        )
    official = DATASETS.get(cfg.dataset).train_classes  # None: the user's own, known once loaded
    if cfg.strict_counts and official is not None:  # a subset: checked against the classes loaded
        check_split(cfg, len(official), source)
    return cfg


def _check_compare(cfg: StudyConfig, source: str) -> None:
    listed = cfg.raw.get("backbone")
    if isinstance(listed, list) and cfg.compare != COMPARE_BACKBONE:
        raise ConfigError(
            f"{source}: backbone is a list ({', '.join(map(str, listed))}), which only compare: backbone"
            " takes (each backbone an arm); name one backbone, or add compare: backbone"
        )
    if cfg.compare is None:
        return
    if cfg.compare == COMPARE_BACKBONE:
        if not isinstance(listed, list) or len(set(listed)) < 2:
            raise ConfigError(
                f"{source}: compare: backbone needs backbone: [a list of at least two timm names], one"
                " arm each (e.g. backbone: [efficientnet_lite0, efficientnet_lite2])"
            )
        if cfg.checkpoint is not None:
            raise ConfigError(
                f"{source}: checkpoint: {cfg.checkpoint} fits one architecture, and compare: backbone"
                " trains several; drop checkpoint, or compare one backbone's mining instead"
            )
    else:
        _check_compared_key(cfg, source)
    bad = [a for a in cfg.arms if not ARM_NAME.fullmatch(a)]
    if bad or len(set(cfg.arms)) != len(cfg.arms):
        raise ConfigError(
            f"{source}: compare: the arms {cfg.arms} must be distinct names of letters, digits, . _ -"
        )


def _check_compared_key(cfg: StudyConfig, source: str) -> None:
    spec = cfg.search_space.specs.get(str(cfg.compare))
    if cfg.compare not in TABLE or not isinstance(spec, Choices) or len(spec.options) < 2:
        raise ConfigError(
            f"{source}: compare: {cfg.compare} must be a hyperparameter the search space gives as"
            f" {{choices: [...]}} with at least two values: each becomes an arm"
        )


# config keys only some datasets' loaders take (their ``options``), and why the others do not
DATASET_OPTIONS = {
    "split_file": "a CSV gives its split in a split column; the benchmarks have their official one",
    "class_disjoint": "the benchmarks' official splits are class-disjoint",
}


def _check_sections(raw: dict, source: str) -> None:
    b = raw["budget"]
    if b["n_trials"] is None and b["timeout"] is None and b["images"] is None:
        raise ConfigError(
            f"{source}: budget: set n_trials, timeout (seconds per worker) or images (processed in all),"
            " or several (the first reached ends the study)"
        )
    pr = raw["pruner"]
    steps = raw["epochs"] * raw["val_folds"]
    if pr["name"] in ("hyperband", "successive_halving") and pr["min_resource"] >= steps:
        raise ConfigError(
            f"{source}: pruner: {pr['name']} with min_resource {pr['min_resource']} prunes nothing: a trial"
            f" runs {steps} epoch(s) in all (epochs x val_folds); set min_resource below {steps}"
        )
    if raw["search_repeats"] > 1 and not raw["compare"]:
        raise ConfigError(
            f"{source}: search_repeats: {raw['search_repeats']} repeats the search of each arm of a"
            " comparison; add compare: (e.g. compare: mining), or drop search_repeats"
        )
    ft = raw["fault_tolerance"]
    if ft["grace_period"] <= ft["heartbeat_interval"]:
        raise ConfigError(
            f"{source}: fault_tolerance: grace_period {ft['grace_period']} must exceed heartbeat_interval"
            f" {ft['heartbeat_interval']} (Optuna suggests 2-3x), or live trials are failed as stale"
        )
    if raw["dataset"] not in DATASETS.names():
        raise ConfigError(f"{source}: {unknown_name('dataset', raw['dataset'], DATASETS.names())}")
    for key, why in DATASET_OPTIONS.items():
        if raw[key] != DEFAULTS[key] and key not in DATASETS.get(raw["dataset"]).options:
            from harness.data import dataset_taking

            takers = ", ".join(dataset_taking(key))
            raise ConfigError(f"{source}: {key} applies to dataset: {takers}, not {raw['dataset']} ({why})")
    if raw["cache_size"] is not None and raw["cache_size"] < raw["image_size"]:
        raise ConfigError(
            f"{source}: cache_size {raw['cache_size']} < image_size {raw['image_size']}; the cache must"
            " hold the crop: raise cache_size or leave it null"
        )
    uri = raw["mlflow_uri"]
    if uri is not None and not uri.startswith(TRACKING_SCHEMES):
        raise ConfigError(
            f"{source}: mlflow_uri: {uri!r} is not a tracking store the harness can write to (MLflow 3's"
            " file store is in maintenance mode and refuses new runs); use sqlite:///PATH/mlflow.db,"
            " postgresql://..., an http(s):// tracking server, or null for results/mlflow.db"
        )
    if raw["evaluate"]["knn"] == "faiss" and importlib.util.find_spec("faiss") is None:
        raise ConfigError(
            f"{source}: evaluate.knn: faiss, but faiss is not installed; pip install faiss-cpu (or"
            " 'triplet-harness[faiss]'), or set evaluate.knn: torch (the same neighbours)"
        )
    if float(raw["evaluate"]["reference_margin"]) <= 0:
        raise ConfigError(
            f"{source}: evaluate.reference_margin: {raw['evaluate']['reference_margin']} is not > 0;"
            " a triplet margin must be positive"
        )


def _check_space(cfg: StudyConfig, source: str) -> None:
    """Every value of every hyperparameter against its row of the table (names first, as a typo in
    a name is the likeliest mistake), for the trunk mode of the study."""
    space, trunk = cfg.search_space, cfg.trunk
    rows = sorted(TABLE.values(), key=lambda p: not isinstance(p.domain, Number))  # names first
    for p in rows:
        where = f"{source}: search_space.{p.name}"
        if not p.applies(trunk):
            if p.name in space:
                only = " / ".join(p.trunks)
                raise ConfigError(f"{where} applies only to trunk: {only} (trunk is {trunk})")
            continue
        spec = space.spec(p.name)
        if isinstance(spec, Range):
            _check_range(spec, where)
        for v in spec.values():
            problem = p.domain.problem(v)
            if problem:
                raise ConfigError(f"{where}: {problem}")
            if trunk in p.disallow and v == p.disallow[trunk][0]:
                raise ConfigError(f"{where}: {p.disallow[trunk][1]}")


def _check_range(spec: Range, where: str) -> None:
    if spec.low > spec.high:
        raise ConfigError(f"{where}: low {spec.low} > high {spec.high}")
    if spec.log and spec.low <= 0:
        raise ConfigError(
            f"{where}: a log range needs low > 0, got low {spec.low}; use a small positive"
            " low (e.g. 1.0e-6) or drop log: true"
        )
    if spec.log and spec.step not in (None, 1):
        raise ConfigError(
            f"{where}: step and log cannot be combined (Optuna samples a log range without a"
            " step); drop one of them"
        )


def check_batch(cfg: StudyConfig, n_fit: int, where: str) -> None:
    """With the validation split the data gives, the classes left to train on must fill the widest
    batch (P classes)."""
    widest = int(max(cfg.search_space.values("batch_p")))
    if n_fit < widest:
        raise ConfigError(
            f"{where}: the data's train split has {n_fit} classes (its validation split is given), but"
            f" search_space.batch_p reaches {widest}; lower batch_p to at most {n_fit}"
        )


def check_split(cfg: StudyConfig, n_train_classes: int, where: str) -> None:
    """The classes a trial trains on (after the carve-out, or in each of the k folds) must fill the
    widest batch (P classes)."""
    widest = int(max(cfg.search_space.values("batch_p")))
    if cfg.val_folds == 1:
        check_carve_out(n_train_classes, cfg.val_fraction, widest, where)
        return
    k = cfg.val_folds
    if n_train_classes // k < 2:
        raise ConfigError(
            f"{where}: val_folds {k} leaves fewer than 2 of the {n_train_classes} training classes per"
            " fold; lower val_folds"
        )
    n_fit = n_train_classes - -(-n_train_classes // k)  # the largest fold validates
    if n_fit < max(2, widest):
        raise ConfigError(
            f"{where}: with val_folds {k} a fold trains on {n_fit} of the {n_train_classes} training"
            f" classes, but search_space.batch_p reaches {widest}; lower batch_p to at most {n_fit}"
        )


def check_carve_out(n_train_classes: int, val_fraction: float, widest_p: int, where: str) -> None:
    """The classes left after the validation carve-out must fill the widest batch (P classes)."""
    n_fit, n_val = carve_out(n_train_classes, val_fraction)
    if n_fit >= max(2, widest_p):
        return
    most_p = carve_out(n_train_classes, 1e-9)[0]  # the fewest validation classes there can be (2)
    if most_p < widest_p:  # no val_fraction can help: only a smaller batch_p
        raise ConfigError(
            f"{where}: search_space.batch_p reaches {widest_p}, but the dataset has {n_train_classes}"
            f" training classes and at least 2 become validation classes, leaving at most {most_p};"
            f" lower batch_p to at most {most_p}"
        )
    most = (n_train_classes - max(2, widest_p)) / n_train_classes
    raise ConfigError(
        f"{where}: val_fraction {val_fraction} makes {n_val} of the {n_train_classes} training classes"
        f" validation classes, leaving {n_fit} to train on, but search_space.batch_p reaches"
        f" {widest_p}; lower val_fraction (at most {most:.2f}) or batch_p"
    )


MIN_VAL_CLASSES = 10  # a validation fold with fewer gives a noisy R@1 (a few classes decide it)


def config_warnings(cfg: StudyConfig, manifest: dict | None = None) -> list[str]:
    """Legal but probably unintended settings: logged by every command and shown in the report.
    With the split manifest, also those that depend on the data (images per class)."""
    out = []
    if manifest and "min_images_per_class" in manifest:
        k = max(cfg.search_space.values("batch_k"))
        fewest = int(manifest["min_images_per_class"]["train"])
        if k > fewest:
            out.append(
                f"batch_k reaches {k}, but some training class has only {fewest} images: its batches repeat"
                " images (sampled with replacement), which adds zero-distance positive pairs"
            )
    folds = manifest.get("folds") if manifest else None
    if folds:
        fewest, floor = (
            min(len(f) for f in folds),
            max(MIN_VAL_CLASSES, int(max(cfg.search_space.values("batch_p")))),
        )
        if fewest < floor:
            out.append(
                f"val_folds {len(folds)} leaves {fewest} classes in a validation fold, fewer than {floor} (a"
                f" batch's P classes, and at least {MIN_VAL_CLASSES}): validation R@1 over so few classes is"
                " noisy, and it ranks the trials; lower val_folds"
            )
    set_draw = [k for k in ("test_fraction", "split_seed") if cfg.user.get(k, DEFAULTS[k]) != DEFAULTS[k]]
    how = str((manifest or {}).get("classes_split", "official"))
    if set_draw and manifest and how != "seeded":
        out.append(
            f"{' and '.join(set_draw)} draw the test classes of a dataset without a split, but this one's"
            f" split is {how}: the setting does nothing"
        )
    n = cfg.budget.n_trials
    if not cfg.search_space.searched() and (n is None or n > 1):
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
