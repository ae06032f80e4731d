"""Prediction: the DiffensPredictor, batch folders, export to the input's geometry, uncertainty, validation."""
from diffens_auto.inference.predictor import DiffensPredictor

__all__ = ["DiffensPredictor"]
