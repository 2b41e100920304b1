"""Distances (pytorch-metric-learning objects) and the triplet margin loss."""

from harness.losses.distances import DISTANCES, get_distance
from harness.losses.triplet import TripletLoss

__all__ = ["DISTANCES", "TripletLoss", "get_distance"]
