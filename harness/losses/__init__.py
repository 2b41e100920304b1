"""Distances (pytorch-metric-learning objects, each registered by name) and the triplet margin loss."""

from harness.losses.distances import get_distance
from harness.losses.triplet import TripletLoss
from harness.registry import DISTANCES

__all__ = ["DISTANCES", "TripletLoss", "get_distance"]
