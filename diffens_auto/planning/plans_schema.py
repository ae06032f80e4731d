"""What a plans file must contain, and a check later stages run before they trust one."""
from diffens_auto.diffusion.prediction import PREDICTIONS
from diffens_auto.errors import DiffensError
from diffens_auto.networks.unet import INFORMATIONAL_KEYS, OPTIONAL_KEYS, REQUIRED_KEYS

REQUIRED_TOP_LEVEL = (
    "plans_name", "preset", "data_identifier", "dataset_name", "channel_names", "dtype", "target_spacing", "crop_size",
    "gpu_memory_target_gb", "resampling", "normalization", "diffusion", "tasks", "configurations",
    "training", "inference",
)
REQUIRED_TASK = (
    "target", "target_name", "inputs", "input_names", "degradation", "condition_channels", "parametrization",
    "target_normalization", "input_normalization", "ensembler_lambda",
)
REQUIRED_CONFIGURATION = ("kind", "patch_size", "batch_size", "network", "in_channels_per_task",
                          "memory_estimate_gb")
NETWORK_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS + INFORMATIONAL_KEYS
REQUIRED_ENSEMBLER = ("experts", "fine_tune_shape", "patch_wise", "expert_slice_batch_size")
REQUIRED_NETWORK = ("spatial_dims", "in_channels", "out_channels", "channels", "num_res_blocks",
                    "attention_levels", "num_head_channels", "time_embed_dim", "norm_num_groups")


class PlansError(DiffensError, ValueError):
    """Raised for a plans file that lacks what the pipeline needs."""


def plans_problems(plans: dict) -> list[str]:
    """Every missing or inconsistent entry of `plans`, as readable sentences (empty: the plans are usable)."""
    problems = [f"missing top-level key '{key}'" for key in REQUIRED_TOP_LEVEL if key not in plans]
    for name, task in plans.get("tasks", {}).items():
        problems += [f"task '{name}' lacks '{key}'" for key in REQUIRED_TASK if key not in task]
        if task.get("prediction", "epsilon") not in PREDICTIONS:
            problems.append(f"task '{name}' has prediction {task['prediction']!r}; known: {list(PREDICTIONS)}")
    configurations = plans.get("configurations", {})
    for name, config in configurations.items():
        problems += [f"configuration '{name}' lacks '{key}'" for key in REQUIRED_CONFIGURATION if key not in config]
        problems += [f"configuration '{name}' network lacks '{key}'"
                     for key in REQUIRED_NETWORK if key not in config.get("network", {})]
        problems += [f"configuration '{name}' network has the unknown key '{key}' (known: {list(NETWORK_KEYS)})"
                     for key in config.get("network", {}) if key not in NETWORK_KEYS]
        if config.get("kind") == "ensembler":
            problems += [f"configuration '{name}' lacks '{key}'" for key in REQUIRED_ENSEMBLER if key not in config]
            problems += [f"configuration '{name}' fuses expert '{expert}', which is not a configuration"
                         for expert in config.get("experts", []) if expert not in configurations]
        missing_tasks = set(plans.get("tasks", {})) - set(config.get("in_channels_per_task", {}))
        if missing_tasks:
            problems.append(f"configuration '{name}' has no in_channels for task(s) {sorted(missing_tasks)}")
    return problems


def validate_plans(plans: dict, source: str = "plans") -> None:
    """Raise PlansError naming every problem of `plans` (read from `source`) and how to fix it."""
    problems = plans_problems(plans)
    if problems:
        raise PlansError(f"{source} is not a usable diffens plans file: " + "; ".join(problems)
                         + ". Re-run diffens_plan_experiment, or fix the entries by hand.")
