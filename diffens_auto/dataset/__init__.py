"""Datasets: dataset.json with tasks, case discovery, naming, splits and integrity checks."""
from diffens_auto.dataset.cases import discover_cases, find_training_cases
from diffens_auto.dataset.dataset_json import DatasetError, DatasetSpec, TaskSpec, load_dataset_json

__all__ = ["DatasetError", "DatasetSpec", "TaskSpec", "discover_cases", "find_training_cases", "load_dataset_json"]
