"""Cutting a timm backbone into a frozen bottom and a trainable top (``trunk: partial``).

``train_blocks = k`` trains the backbone's last k stages and its neck (the layers between the last
stage and the pooling: EfficientNet's ``conv_head`` + ``bn2``, ConvNeXt's final norm); everything
below the cut is frozen, runs once per image and view, and is cached (``activations.py``).

| family | stages | neck | train_blocks |
|---|---|---|---|
| EfficientNet (incl. Lite0) | ``blocks`` (7) | conv_head, bn2 | 0 .. 7 |
| ResNet | layer1 .. layer4 | none | 1 .. 4 |
| ConvNeXt | ``stages`` (4) | head.norm | 0 .. 4 |
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness.errors import ConfigError

FAMILIES = "EfficientNet (efficientnet_*, tf_efficientnet_*), ResNet (resnet*) and ConvNeXt (convnext_*)"


def family(model: nn.Module) -> str:
    name = type(model).__name__
    if name in ("EfficientNet", "ResNet", "ConvNeXt"):
        return name
    raise ConfigError(f"trunk: partial supports {FAMILIES}; {name} has no stage structure known here")


def stages(model: nn.Module) -> list[nn.Module]:
    fam = family(model)
    if fam == "EfficientNet":
        return list(model.blocks)  # type: ignore[arg-type]
    if fam == "ResNet":
        return [model.layer1, model.layer2, model.layer3, model.layer4]  # type: ignore[list-item]
    return list(model.stages)  # type: ignore[arg-type]


def allowed_blocks(model: nn.Module) -> range:
    """train_blocks values that leave something to train and something to cache."""
    n = len(stages(model))
    return range(1 if family(model) == "ResNet" else 0, n + 1)


def check_train_blocks(model: nn.Module, values: list[int], backbone: str) -> None:
    ok = allowed_blocks(model)
    bad = [v for v in values if v not in ok]
    if bad:
        raise ConfigError(
            f"search_space.train_blocks: {bad[0]} is outside {ok.start}..{ok.stop - 1}, the range for"
            f" {backbone} ({len(stages(model))} stages; 0 trains only the layers after the last stage)"
        )


class Bottom(nn.Module):
    """The frozen part: input image -> activations at every requested cut, in one pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.fam = family(model)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.fam == "EfficientNet":
            return m.bn1(m.conv_stem(x))  # type: ignore[operator]
        if self.fam == "ResNet":
            return m.maxpool(m.act1(m.bn1(m.conv1(x))))  # type: ignore[operator]
        return m.stem(x)  # type: ignore[operator]

    def forward(self, x: torch.Tensor, cuts: list[int]) -> dict[int, torch.Tensor]:
        """{train_blocks: activations before the last train_blocks stages} for each of ``cuts``."""
        all_stages = stages(self.model)
        n = len(all_stages)
        need = {n - k for k in cuts}  # the number of stages run before each cut
        out: dict[int, torch.Tensor] = {}
        h = self.stem(x)
        for i in range(n + 1):
            if i in need:
                out[n - i] = h
            if i == n or i >= max(need):
                break
            h = all_stages[i](h)
        return out


class Top(nn.Module):
    """The trainable part: cached activations -> the backbone's pooled features (num_features)."""

    def __init__(self, model: nn.Module, train_blocks: int) -> None:
        super().__init__()
        m = copy.deepcopy(model)
        fam = family(m)
        all_stages = stages(m)
        self.stages = nn.Sequential(*all_stages[len(all_stages) - train_blocks :])
        if fam == "EfficientNet":
            self.neck = nn.Sequential(m.conv_head, m.bn2)  # type: ignore[arg-type]
        elif fam == "ConvNeXt":
            self.neck = nn.Sequential(m.norm_pre)  # type: ignore[arg-type]
        else:
            self.neck = nn.Sequential()
        self.pool: nn.Module = m.global_pool if fam != "ConvNeXt" else m.head.global_pool  # type: ignore[assignment,union-attr]
        self.post: nn.Module = m.head.norm if fam == "ConvNeXt" else nn.Identity()  # type: ignore[assignment,union-attr]
        if not any(p.numel() for p in self.parameters()):
            raise ConfigError(
                f"train_blocks {train_blocks} leaves nothing to train in {type(model).__name__}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.neck(self.stages(x)))
        return self.post(h).flatten(1)


def set_bn_frozen(module: nn.Module) -> None:
    """BatchNorm layers in eval mode (running statistics fixed, as pretrained): call after .train()."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
