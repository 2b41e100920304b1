"""Backbones (timm trunk + embedding head), offline pretrained weights, frozen-trunk features."""

from harness.models.embedder import Embedder, EmbeddingHead, TrunkInfo, create_trunk
from harness.models.features import embed_images, feature_cache_path, trunk_features

__all__ = [
    "Embedder",
    "EmbeddingHead",
    "TrunkInfo",
    "create_trunk",
    "embed_images",
    "feature_cache_path",
    "trunk_features",
]
