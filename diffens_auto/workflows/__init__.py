"""Workflows that chain several stages: plan and preprocess a dataset, train a configuration and validate it."""
