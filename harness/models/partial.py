"""Cutting a timm backbone into a frozen bottom and a trainable top (``trunk: partial``).

``train_blocks = k`` trains the backbone's last k stages and everything after them (its neck and
pooling head: EfficientNet's ``conv_head`` + ``bn2``, ConvNeXt's final norms); everything below the
cut is frozen, runs once per image and view, and is cached (``activations.py``).

The stages come from timm's own description of the model, not from a list of families here:
``feature_info`` names the modules whose outputs are the model's feature maps. When the last of
them is ``blocks.6`` or ``stages.3``, the stages are the children of that container (EfficientNet
and MobileNet: 7 ``blocks``; ConvNeXt: 4 ``stages``); when it is a top-level module (``layer4``,
``s4``), the stages are the top-level modules of that name with another number (ResNet
``layer1..4``, RegNet ``s1..4``). The stem is every top-level module registered before the stages.
The top is the model itself with its stem and lower stages replaced by identities, so timm's own
``forward_features`` and ``forward_head`` run the neck and the pooling.

A vision transformer (timm's ``VisionTransformer``: ViT, DeiT, DINO, DINOv2) is cut between its
blocks: the bottom is its token embedding (patches, class and register tokens, position
embeddings: timm's ``_pos_embed``) and its first blocks, and caches the tokens; the top runs the
last ``train_blocks`` blocks, the final norm and timm's head (pooling of the class token or the
mean, ``fc_norm``). ``train_blocks: 0`` trains only the final norm.

``check_cuts`` proves the cut on the model: the bottom followed by the top must give the model's own
output; a family whose ``forward_features`` does more than that fails the check, and can be
described by one ``LAYOUTS`` entry.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    """Names of top-level modules (``stem``), and of the stages in order (dotted for a container)."""

    stem: tuple[str, ...]
    stages: tuple[str, ...]
    tokens: bool = False  # a transformer: the stem is its token embedding, the stages its blocks


def is_token_model(model: nn.Module) -> bool:
    """timm's VisionTransformer family: patches to tokens (``patch_embed``), then ``_pos_embed``."""
    return all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head"))


TOKEN_PARAMS = ("pos_embed", "cls_token", "reg_token")  # the embedding's own tensors: the bottom's


# Families timm's metadata does not describe well enough, by class name: one line each.
LAYOUTS: dict[str, Layout] = {}


def layout(model: nn.Module) -> Layout:
    name = type(model).__name__
    if name in LAYOUTS:
        return LAYOUTS[name]
    info = getattr(model, "feature_info", None)
    modules = [str(f["module"]) for f in info] if isinstance(info, list) and info else []
    if not modules:
        raise ConfigError(
            f"trunk: partial: {name} has no timm feature_info naming its stages; add it to LAYOUTS"
        )
    last = modules[-1]
    children = [n for n, _ in model.named_children()]
    container, _, index = last.rpartition(".")
    if container and index.isdigit():
        stages = tuple(f"{container}.{n}" for n, _ in model.get_submodule(container).named_children())
        first = container
    else:
        pattern = re.compile(re.sub(r"\d+$", "", last) + r"\d+")
        stages = tuple(n for n in children if pattern.fullmatch(n))
        if not stages:
            raise ConfigError(
                f"trunk: partial: {name}'s last feature module {last!r} is not one of numbered stages;"
                " describe the model in harness.models.partial.LAYOUTS, or use trunk: finetune"
            )
        first = stages[0]
    return Layout(stem=tuple(children[: children.index(first)]), stages=stages, tokens=is_token_model(model))


def embed_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A transformer's forward up to its first block: patches, class/register tokens, positions."""
    m: Any = model
    return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class Bottom(nn.Module):
    """The frozen part: input image -> activations at every requested cut, in one pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layout = layout(model)

    def forward(self, x: torch.Tensor, cuts: list[int]) -> dict[int, torch.Tensor]:
        """{train_blocks: activations before the last train_blocks stages} for each of ``cuts``."""
        if self.layout.tokens:
            x = embed_tokens(self.model, x)
        else:
            for name in self.layout.stem:
                x = self.model.get_submodule(name)(x)
        n = len(self.layout.stages)
        need = {n - k for k in cuts}  # the number of stages run before each cut
        out: dict[int, torch.Tensor] = {}
        for i in range(n + 1):
            if i in need:
                out[n - i] = x
            if i == n or i >= max(need):
                break
            x = self.model.get_submodule(self.layout.stages[i])(x)
        return out


class Stacked(nn.Module):
    """Bottom then a trained top again: the whole model, image -> embedding, for export."""

    def __init__(self, bottom: Bottom, train_blocks: int, top: nn.Module) -> None:
        super().__init__()
        self.bottom, self.train_blocks, self.top = bottom, train_blocks, top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.bottom(x, [self.train_blocks])[self.train_blocks])


class Top(nn.Module):
    """The trainable part: cached activations -> the backbone's pooled features (num_features). A copy
    of the model whose stem and first stages are identities; timm's forward does the rest."""

    def __init__(self, model: nn.Module, train_blocks: int) -> None:
        super().__init__()
        lay = layout(model)
        self.tokens = lay.tokens
        self.model = copy.deepcopy(model)
        for name in (*lay.stem, *lay.stages[: len(lay.stages) - train_blocks]):
            _set(self.model, name, nn.Identity())
        for name in TOKEN_PARAMS if lay.tokens else ():  # used by the bottom only: not trained here
            if isinstance(getattr(self.model, name, None), nn.Parameter):
                setattr(self.model, name, None)
        if not any(p.numel() for p in self.parameters()):
            raise ConfigError(
                f"train_blocks {train_blocks} leaves nothing to train in {type(model).__name__}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        features = m.norm(m.blocks(x)) if self.tokens else m.forward_features(x)  # tokens: no re-embedding
        return m.forward_head(features, pre_logits=True).flatten(1)


def allowed_blocks(model: nn.Module) -> range:
    """train_blocks values that leave something to train and something to cache (0: only the layers
    after the last stage train, where there are any)."""
    n = len(layout(model).stages)
    try:
        Top(model, 0)
    except ConfigError:
        return range(1, n + 1)
    return range(0, n + 1)


def check_cuts(model: nn.Module, values: list[int], backbone: str, size: int = 64) -> None:
    """Every value in range, and bottom-then-top equal to the model's own forward (eval mode)."""
    ok = allowed_blocks(model)
    bad = [v for v in values if v not in ok]
    if bad:
        raise ConfigError(
            f"search_space.train_blocks: {bad[0]} is outside {ok.start}..{ok.stop - 1}, the range for"
            f" {backbone} ({len(layout(model).stages)} stages; 0 trains only the layers after the last stage)"
        )
    was = model.training
    model.eval()
    cannot = (
        f"trunk: partial cannot cut {backbone} ({type(model).__name__}): its forward is more than its"
        " stem and stages in order; describe it in harness.models.partial.LAYOUTS"
    )
    try:
        with torch.no_grad():
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
            whole = model(x)
            parts = Bottom(model)(x, values)
            for k in values:
                if not torch.allclose(Top(model, k).eval()(parts[k]), whole, rtol=1e-4, atol=1e-5):
                    raise ConfigError(f"{cannot} (train_blocks {k} gives other features)")
    except (RuntimeError, ValueError, TypeError, AttributeError, AssertionError) as e:
        raise ConfigError(f"{cannot} ({type(e).__name__}: {e})") from None
    finally:
        model.train(was)


def set_bn_frozen(module: nn.Module) -> None:
    """BatchNorm layers in eval mode (running statistics fixed, as pretrained): call after .train()."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
