"""Task conditioning shared by training and prediction: normalisation, the condition, residual <-> target."""
