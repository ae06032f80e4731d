"""Datasets: dataset.json with tasks, case discovery, integrity checks and the synthetic demo dataset."""
from diffens_auto.dataset.cases import discover_cases, find_training_cases
from diffens_auto.dataset.dataset_json import DatasetError, DatasetSpec, TaskSpec, load_dataset_json

__all__ = ["DatasetError", "DatasetSpec", "TaskSpec", "discover_cases", "find_training_cases", "load_dataset_json"]
