"""Prediction: the DiffensPredictor, batch folders, export to the input's geometry, uncertainty."""
