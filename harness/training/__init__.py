"""Training a trial: input sources and the timed loop."""

from harness.training.sources import ActivationSource, FeatureSource, ImageSource, Source
from harness.training.trainer import TrainingDiverged, embed_source, evaluate_source, train

__all__ = [
    "ActivationSource",
    "FeatureSource",
    "ImageSource",
    "Source",
    "TrainingDiverged",
    "embed_source",
    "evaluate_source",
    "train",
]
