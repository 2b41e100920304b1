"""The hyperparameters of a trial: one table, and everything else derived from it.

``TrialParams`` is the table. Each field is one hyperparameter; its type is the annotation, and
``hp(...)`` gives the rest:

- ``default``: the value a trial uses when the study's search space leaves the parameter out (and
  what the fixed reference recipes use);
- ``domain``: which values are allowed (and so how it is sampled: ``Number`` a float range,
  ``Integer`` an int range, ``Name`` a categorical), checked when a config is read;
- ``trunks``: the trunk modes it applies to; elsewhere it takes ``off``, its neutral value (a
  frozen or fine-tuned trunk trains BatchNorm in batch mode at the head's learning rate);
- ``when``: a parameter that exists only when another has some value (a miner's own knobs);
- ``label`` and ``fmt``: its column in the report's tables.

Derived from it: the ``search_space`` part of the config schema, the order Optuna is asked for
values (the field order: it fixes the sampler's random stream, so new fields go last), the
parameters recorded with a trial and re-trained by the evaluation, the references' defaults and
the report's parameter columns. Adding a hyperparameter is one field here, plus its use in
training. This module imports nothing heavy: configs are checked with it before torch loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from harness.registry import DISTANCES, MINERS, TRUNKS, Registry

TRUNK_MODES = TRUNKS.names()  # frozen, partial, finetune: harness.study.trunks


@dataclass(frozen=True)
class Number:
    """A float: a fixed value, a ``{low, high[, log, step]}`` range or ``{choices: [...]}``."""

    minimum: float | None = None
    exclusive: bool = False  # values must be > minimum (else >= minimum)
    why: str = ""  # the reason a value below the minimum is refused, for the message
    integer: ClassVar[bool] = False

    @property
    def schema_ref(self) -> str:
        """Its definition in schema.json."""
        return "number_param"

    def problem(self, value: Any) -> str | None:
        if self.minimum is None:
            return None
        if value > self.minimum if self.exclusive else value >= self.minimum:
            return None
        sign = ">" if self.exclusive else ">="
        return f"{value} is not {sign} {self.minimum:g}" + (f"; {self.why}" if self.why else "")


@dataclass(frozen=True)
class Integer(Number):
    """An integer (sampled with ``suggest_int``); a ``minimum`` of 0 admits 0 (a count)."""

    integer: ClassVar[bool] = True

    @property
    def schema_ref(self) -> str:
        return "count_param" if self.minimum is not None and self.minimum < 1 else "int_param"


@dataclass(frozen=True)
class Name:
    """One of a fixed set of names, or of a registry's (sampled as a categorical)."""

    choices: tuple[str, ...] | Registry = ()
    kind: str = "value"  # how the message names it: "unknown miner 'x'"
    integer: ClassVar[bool] = False

    @property
    def schema_ref(self) -> str:
        return "name_param"

    def known(self) -> tuple[str, ...]:
        return self.choices.names() if isinstance(self.choices, Registry) else self.choices

    def problem(self, value: Any) -> str | None:
        known = self.known()
        if value in known:
            return None
        return f"unknown {self.kind} {value!r}; known {self.kind}s: {', '.join(known)}"


Domain = Number | Integer | Name


@dataclass(frozen=True)
class HyperParam:
    """One row of the table (the metadata of a ``TrialParams`` field; see the module doc)."""

    name: str
    default: Any
    off: Any
    domain: Domain
    trunks: tuple[str, ...]
    when: tuple[str, Callable[[Any], bool]] | None
    disallow: Mapping[str, tuple[Any, str]]  # trunk mode -> (value, why) refused in that mode
    label: str
    fmt: str
    doc: str

    def applies(self, trunk: str) -> bool:
        return trunk in self.trunks

    def active(self, trunk: str, values: Mapping[str, Any]) -> bool:
        """Is it part of a trial with these (earlier) values?"""
        if not self.applies(trunk):
            return False
        return self.when is None or self.when[1](values.get(self.when[0]))

    def format(self, value: Any) -> str:
        return format(value, self.fmt) if self.fmt and isinstance(value, (int, float)) else str(value)


def hp(
    default: Any,
    domain: Domain,
    *,
    off: Any = MISSING,
    trunks: tuple[str, ...] = TRUNK_MODES,
    when: tuple[str, Callable[[Any], bool]] | None = None,
    disallow: Mapping[str, tuple[Any, str]] | None = None,
    label: str = "",
    fmt: str = "",
    doc: str = "",
) -> Any:
    """A ``TrialParams`` field: its dataclass default is ``off`` (``default`` when it applies always)."""
    meta = {
        "default": default,
        "off": default if off is MISSING else off,
        "domain": domain,
        "trunks": trunks,
        "when": when,
        "disallow": dict(disallow or {}),
        "label": label,
        "fmt": fmt,
        "doc": doc,
    }
    return field(default=meta["off"], metadata={"hp": meta})


def is_offline(mining: Any) -> bool:
    """Does miner ``mining`` mine the whole training split between epochs? The miner's class says
    (``Miner.offline``); a name that is no miner (another compare: arm) is not offline."""
    if str(mining) not in MINERS.names():
        return False
    return bool(MINERS.get(str(mining)).offline)


POSITIVE_LR = "a learning rate must be positive"
PARTIAL_ONLY = ("partial",)


@dataclass(frozen=True)
class TrialParams:
    margin: float = hp(
        0.2,
        Number(
            0.0,
            exclusive=True,
            why="a triplet margin must be positive (at 0 every correctly ordered triplet is loss-free)",
        ),
        label="margin",
        fmt=".3g",
        doc="the triplet margin",
    )
    batch_p: int = hp(
        16,
        Integer(2, why="a P x K batch needs P >= 2 classes for triplets"),
        label="P×K",
        doc="classes per batch (the report shows P×K in one column)",
    )
    batch_k: int = hp(
        4,
        Integer(2, why="a P x K batch needs K >= 2 images per class for triplets"),
        doc="images per class in a batch",
    )
    distance: str = hp(
        "cosine",
        Name(DISTANCES, kind="distance"),
        label="distance",
        doc="the distance of the loss and the kNN",
    )
    mining: str = hp(
        "semihard", Name(MINERS, kind="miner"), label="mining", doc="the triplet mining strategy"
    )
    lr: float = hp(
        1e-4,
        Number(0.0, exclusive=True, why=POSITIVE_LR),
        label="lr",
        fmt=".1e",
        doc="the head's learning rate",
    )
    embedding_dim: int = hp(
        128,
        Integer(0),
        disallow={
            "frozen": (
                0,
                "0 (no projection) leaves nothing to train with trunk: frozen; use a dimension >= 1,"
                " or trunk: partial / finetune",
            )
        },
        label="dim",
        doc="the embedding's dimension; 0: no projection, the trunk's own pooled features",
    )
    weight_decay: float = hp(
        1e-4, Number(0.0, why="weight decay cannot be negative"), doc="the optimiser's weight decay"
    )
    refresh_every: int = hp(
        1, Integer(1), when=("mining", is_offline), doc="offline mining: re-mine every N epochs"
    )
    train_blocks: int = hp(
        1,
        Integer(0),
        off=0,
        trunks=PARTIAL_ONLY,
        label="blocks",
        doc="the backbone's last stages that train (harness.models.partial)",
    )
    trunk_lr: float = hp(
        1e-5,
        Number(0.0, exclusive=True, why=POSITIVE_LR),
        off=0.0,
        trunks=PARTIAL_ONLY,
        label="trunk lr",
        fmt=".1e",
        doc="the trainable trunk's learning rate (off, 0: the head's lr)",
    )
    bn: str = hp(
        "frozen",
        Name(("frozen", "train")),
        off="train",
        trunks=PARTIAL_ONLY,
        doc="BatchNorm in the trainable trunk: frozen (pretrained statistics) | train (batch statistics)",
    )

    @property
    def batch_size(self) -> int:
        return self.batch_p * self.batch_k


def table() -> Iterator[HyperParam]:
    """The rows, in suggestion order."""
    for f in fields(TrialParams):
        yield HyperParam(name=f.name, **f.metadata["hp"])


TABLE: dict[str, HyperParam] = {p.name: p for p in table()}


def defaults(trunk: str) -> dict[str, Any]:
    """What a trial with ``trunk`` uses for every parameter its search space leaves out."""
    return {p.name: p.default if p.applies(trunk) else p.off for p in TABLE.values()}
