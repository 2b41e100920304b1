"""Study config parsing: schema errors in one clear line, registry checks, defaults, space hash."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from harness.errors import ConfigError
from harness.registry import DATASETS, DISTANCES, MINERS
from harness.study import load_config, parse_config
from harness.study.config import DEFAULTS, Budget, Fixed, SamplerConfig

MINIMAL: dict[str, Any] = {"name": "tiny", "dataset": "cub"}
SCHEMA_KEYS = sorted(
    json.loads(resources.files("harness.study").joinpath("schema.json").read_text())["properties"]
)


def cfg(**over: Any) -> dict[str, Any]:
    return MINIMAL | over


def error(data: Any) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "study.yaml")
    msg = str(err.value)
    assert "\n" not in msg  # one clear line
    assert msg.startswith("study.yaml") or "unknown dataset" in msg
    return msg


def test_defaults_are_applied() -> None:
    c = parse_config(MINIMAL)
    assert (c.name, c.dataset) == ("tiny", "cub")
    for key, value in DEFAULTS.items():
        assert c.raw[key] == value, key
    assert c.epochs == 8 and c.search_space.specs == {} and c.raw["search_space"] == {}
    assert c.cache_px == 128
    assert c.study_dir == Path("results") / "tiny"


def test_nested_sections_merge_with_defaults_but_search_space_replaces() -> None:
    c = parse_config(cfg(budget={"n_trials": 3}, sampler={"name": "random"}, search_space={"margin": 0.1}))
    assert c.budget == Budget(n_trials=3, timeout=None)
    assert c.sampler == SamplerConfig(name="random", seed=0, n_startup_trials=8)
    assert c.search_space.specs == {"margin": Fixed(0.1)} and c.raw["search_space"] == {"margin": 0.1}


def test_defaults_are_not_shared_between_configs() -> None:
    a = parse_config(MINIMAL)
    a.raw["budget"]["n_trials"] = 999
    assert parse_config(MINIMAL).budget.n_trials == DEFAULTS["budget"]["n_trials"] == 20


def test_unknown_top_level_key_names_it_and_lists_allowed() -> None:
    msg = error(cfg(epochz=3))
    assert "'epochz'" in msg and "top level" in msg
    allowed = msg.split("allowed keys:")[1]
    assert [k.strip() for k in allowed.split(",")] == SCHEMA_KEYS


def test_unknown_key_in_a_section() -> None:
    msg = error(cfg(search_space={"margn": 0.2}))
    assert "'margn'" in msg and "search_space" in msg
    for key in ("margin", "batch_p", "mining", "refresh_every"):
        assert key in msg


def test_missing_required_key() -> None:
    assert "dataset" in error({"name": "tiny"})


def test_not_a_mapping() -> None:
    assert "mapping" in error(["name", "tiny"])


@pytest.mark.parametrize(
    "mining", ["hardest", {"choices": ["semihard", "hardest"]}, {"choices": ["offline-hardest"]}]
)
def test_unknown_miner_lists_known_miners(mining: Any) -> None:
    msg = error(cfg(search_space={"mining": mining}))
    assert "search_space.mining" in msg and "hardest" in msg
    for name in MINERS.names():
        assert name in msg


def test_unknown_distance_lists_known_distances() -> None:
    msg = error(cfg(search_space={"distance": {"choices": ["cosine", "l1"]}}))
    assert "'l1'" in msg
    for name in DISTANCES.names():
        assert name in msg


def test_every_known_miner_and_distance_is_accepted() -> None:
    space = {"mining": {"choices": list(MINERS.names())}, "distance": {"choices": list(DISTANCES.names())}}
    assert parse_config(cfg(search_space=space)).raw["search_space"] == space


def test_unknown_dataset_lists_known() -> None:
    msg = error(cfg(dataset="mnist"))
    assert "'mnist'" in msg
    for name in DATASETS.names():
        assert name in msg


@pytest.mark.parametrize("key", ["margin", "batch_p", "lr"])
def test_low_above_high(key: str) -> None:
    msg = error(cfg(search_space={key: {"low": 5, "high": 1}}))
    assert f"search_space.{key}" in msg and "low 5 > high 1" in msg


def test_low_equal_high_is_fine() -> None:
    parse_config(cfg(search_space={"margin": {"low": 0.2, "high": 0.2}}))


@pytest.mark.parametrize(
    "over",
    [{"epochs": 0}, {"val_fraction": 1.0}, {"trunk": "half"}, {"name": "has space"}, {"image_size": 8}],
)
def test_schema_value_errors(over: dict[str, Any]) -> None:
    (key,) = over
    assert key in error(cfg(**over))


def test_space_hash() -> None:
    base = parse_config(cfg(search_space={"margin": {"low": 0.1, "high": 0.3}}))
    same = parse_config(cfg(search_space={"margin": {"low": 0.1, "high": 0.3}}))
    wider = parse_config(cfg(search_space={"margin": {"low": 0.1, "high": 0.4}}))
    more = parse_config(cfg(search_space={"margin": {"low": 0.1, "high": 0.3}, "mining": "hard"}))
    assert base.space_hash() == same.space_hash()
    assert len({base.space_hash(), wider.space_hash(), more.space_hash()}) == 3
    # What trials mean changes with the data protocol too, but not with cosmetic keys.
    space = base.raw["search_space"]
    assert parse_config(cfg(seed=1, search_space=space)).space_hash() != base.space_hash()
    assert parse_config(cfg(epochs=2, search_space=space)).space_hash() != base.space_hash()
    cosmetic = parse_config(cfg(description="x", workers=4, search_space=space))
    assert cosmetic.space_hash() == base.space_hash()


def test_cache_size_below_image_size_is_rejected() -> None:
    assert "cache_size" in error(cfg(image_size=128, cache_size=64))


def test_space_hash_depends_on_cache_size() -> None:
    a = parse_config(cfg(image_size=128))
    b = parse_config(cfg(image_size=128, cache_size=160))
    assert a.space_hash() != b.space_hash()


@pytest.mark.parametrize("key", ["batch_p", "batch_k"])
def test_batch_sizes_below_two_are_rejected_early(key: str) -> None:
    assert key in error(cfg(search_space={key: {"low": 1, "high": 8}}))


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: tiny\ndataset: cub\nsearch_space:\n  mining: {choices: [semihard, offline-hard]}\n"
    )
    assert load_config(good).raw["search_space"] == {"mining": {"choices": ["semihard", "offline-hard"]}}


def test_the_schema_lists_every_hyperparameter_and_trunk_mode() -> None:
    """The search space's keys come from the table, the trunk modes from their registry."""
    from harness.params import TABLE
    from harness.registry import TRUNKS
    from harness.study.config import schema

    s = schema()
    assert list(s["properties"]["search_space"]["properties"]) == list(TABLE)
    assert set(s["properties"]["trunk"]["enum"]) == set(TRUNKS.names()) == {"frozen", "partial", "finetune"}
    for p in TABLE.values():
        ref = s["properties"]["search_space"]["properties"][p.name]["$ref"]
        assert ref.split("/")[-1] in s["definitions"], p.name


def test_the_space_hash_of_existing_studies_does_not_move() -> None:
    """A study created before a new config key existed must still open: its hash is frozen here."""
    from harness.study import parse_config

    cfg = parse_config({"name": "x", "dataset": "cub", "search_space": {"margin": {"low": 0.1, "high": 0.3}}})
    assert cfg.space_hash() == "30a2d24163823b1f"  # as computed by the harness at d38797c


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "studies").rglob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_shipped_study_config_is_valid(path: Path) -> None:
    """A study the README or a bench script names must parse: schema, cross-field rules, names."""
    cfg = parse_config(yaml.safe_load(path.read_text()))
    assert cfg.name == path.stem


def test_the_evaluation_settings_name_the_metrics_own_choices() -> None:
    """evaluate.knn takes exactly the kNN backends, and nmi_max_images defaults to the metrics' own
    bound: one list and one default, read by config and metrics alike."""
    from harness.evaluation import BACKENDS
    from harness.evaluation.metrics import NMI_MAX_IMAGES
    from harness.study import parse_config
    from harness.study.config import DEFAULTS, schema

    assert schema()["properties"]["evaluate"]["properties"]["knn"]["enum"] == list(BACKENDS)
    assert DEFAULTS["evaluate"]["nmi_max_images"] == NMI_MAX_IMAGES
    with pytest.raises(ConfigError, match="knn"):
        parse_config({"name": "x", "dataset": "cub", "budget": {"n_trials": 1}, "evaluate": {"knn": "annoy"}})
