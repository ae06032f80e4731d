"""Test helper: the tiny preset's plans for a small synthetic fingerprint, and untrained networks built from them."""
import torch

from diffens_auto.dataset.dataset_json import degradation_key
from diffens_auto.networks import Ensembler, build_expert
from diffens_auto.planning import network_for_task, plan_experiment

TASK = "sr"


def tiny_plans(shape=(16, 16, 16), factor=2, task: str = TASK, channels=("T1", "T2"), target: int = 1,
               gpu_memory_target_gb: float = 8) -> dict:
    """Tiny-preset plans of a two-case dataset of `shape` foregrounds at 1 mm with one avgpool SR task."""
    factor = [factor] * 3 if isinstance(factor, int) else list(factor)
    fingerprint = {"spacings": [[1.0, 1.0, 1.0]] * 2, "shapes_after_crop": [list(shape)] * 2,
                   "foreground_intensity_properties_per_channel": {
                       str(c): {"percentile_00_5": 0.0, "percentile_99_5": 1.0} for c in range(len(channels))}}
    tasks = {task: {"target": target, "inputs": [], "degradation": {"type": "avgpool", "factor": factor}}}
    return plan_experiment(with_residual_statistics(fingerprint, tasks), tasks, dict(enumerate(channels)),
                           "Dataset001_Tiny", gpu_memory_target_gb=gpu_memory_target_gb, preset="tiny")


RECON_TASK = "recon"
RECON_DEGRADATION = {"type": "kspace", "mask": "poisson", "acceleration": 4, "acs": 4, "slice_axis": 2}


def tiny_recon_plans(shape=(16, 16, 16), degradation=None, channels=("T1",), target: int = 0) -> dict:
    """Tiny-preset plans of a two-case dataset of `shape` foregrounds at 1 mm with one kspace (recon) task."""
    fingerprint = {"spacings": [[1.0, 1.0, 1.0]] * 2, "shapes_after_crop": [list(shape)] * 2,
                   "foreground_intensity_properties_per_channel": {
                       str(c): {"percentile_00_5": 0.0, "percentile_99_5": 1.0} for c in range(len(channels))}}
    tasks = {RECON_TASK: {"target": target, "inputs": [], "degradation": dict(degradation or RECON_DEGRADATION)}}
    return plan_experiment(fingerprint, tasks, dict(enumerate(channels)), "Dataset001_TinyRecon", preset="tiny")


def tiny_models(plans: dict, task: str = TASK, seed: int = 0) -> tuple[dict, dict]:
    """Untrained experts and ensemblers (eval mode) of every configuration of `plans`, keyed by name."""
    torch.manual_seed(seed)
    experts, ensemblers = {}, {}
    for name, config in plans["configurations"].items():
        network = network_for_task(plans, name, task)
        if config["kind"] == "expert":
            experts[name] = build_expert(network).eval()
        else:
            parametrizations = [plans["tasks"][task]["parametrization"]] * len(config["experts"])
            ensemblers[name] = Ensembler(network, config["experts"], parametrizations,
                                         plans["tasks"][task]["ensembler_lambda"]).eval()
    return experts, ensemblers


def residual_statistics(rms: float = 0.25, abs_max: float = 1.5) -> dict:
    """Pooled residual statistics as the fingerprint extractor writes them for one SR degradation."""
    return {"rms": rms, "abs_percentile_99": 0.6 * abs_max, "abs_percentile_99_9": 0.8 * abs_max,
            "abs_max": abs_max, "num_voxels": 1000}


def any_residual_statistics(num_channels: int, **stats) -> dict:
    """residual_statistics_per_channel for every channel under every avgpool factor of 1-4 per axis."""
    keys = [f"avgpool_{a}x{b}x{c}" for a in range(1, 5) for b in range(1, 5) for c in range(1, 5)]
    return {str(channel): {key: residual_statistics(**stats) for key in keys} for channel in range(num_channels)}


def with_residual_statistics(fingerprint: dict, tasks: dict, **stats) -> dict:
    """A hand-made fingerprint plus residual statistics of each SR task's target (what the extractor measures)."""
    residuals = {}
    for task in tasks.values():
        degradation = task.get("degradation")
        if degradation:
            residuals.setdefault(str(task["target"]), {})[degradation_key(degradation)] = residual_statistics(**stats)
    return {**fingerprint, "residual_statistics_per_channel": residuals}
