"""Experiment planning: target spacing, crop, expert and ensembler topologies and batch sizes within a memory budget."""
from .memory import MemoryEstimate, count_parameters, estimate_inference_memory, estimate_training_memory
from .planner import PlanningError, network_for_task, plan_experiment
from .plans_schema import PlansError, plans_problems, validate_plans
from .presets import PRESETS, Preset, UnknownPresetError, get_preset

__all__ = [
    "MemoryEstimate", "count_parameters", "estimate_inference_memory", "estimate_training_memory",
    "PlanningError", "network_for_task", "plan_experiment",
    "PlansError", "plans_problems", "validate_plans",
    "PRESETS", "Preset", "UnknownPresetError", "get_preset",
]
