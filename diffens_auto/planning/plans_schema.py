"""What a plans file must contain, and a check later stages run before they trust one."""
from diffens_auto.dataset.dataset_json import degradation_key
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


# keys of an SR task's residual space, meaningless for a k-space task's unconditional prior of the target
RESIDUAL_KEYS = ("residual_scale", "clip_x0", "start_timestep")


class PlansError(DiffensError, ValueError):
    """Raised for a plans file that lacks what the pipeline needs."""


def _kspace_task_problems(name: str, task: dict, degradation: dict) -> list[str]:
    """What makes a k-space task's entry other than an unconditional, scale-normalised prior of its target."""
    missing = [key for key in ("mask", "acceleration") if key not in degradation]
    if missing:
        return [f"task '{name}' has a kspace degradation without {missing}"]
    problems = []
    if task.get("condition_channels", []) != [] or task.get("inputs", []) != []:
        problems.append(f"task '{name}' (kspace) has condition_channels {task.get('condition_channels')} and "
                        f"inputs {task.get('inputs')}; its experts are unconditional priors: both must be []")
    if task.get("parametrization", "epsilon_target") != "epsilon_target":
        problems.append(f"task '{name}' (kspace) has parametrization {task['parametrization']!r}; a prior of the "
                        "target needs 'epsilon_target'")
    try:
        expected = f"degraded:{degradation_key(degradation)}"
    except (KeyError, TypeError, ValueError, IndexError):
        return problems + [f"task '{name}' has the malformed kspace degradation {degradation!r} (see "
                           "documentation/dataset_format.md for its fields)"]
    if task.get("target_normalization", expected) != expected:
        problems.append(f"task '{name}' (kspace) has target_normalization {task['target_normalization']!r}; the "
                        f"scale of its zero-filled image is {expected!r}")
    problems += [f"task '{name}' (kspace) has '{key}', which only an SR residual has" for key in RESIDUAL_KEYS
                 if key in task]
    return problems


def _degradation_problems(name: str, task: dict) -> list[str]:
    """A task's degradation: a known type, and what the rest of the entry must be for it."""
    degradation = task.get("degradation")
    if not degradation:
        return []
    kind = degradation.get("type") if isinstance(degradation, dict) else None
    if kind == "kspace":
        return _kspace_task_problems(name, task, degradation)
    if kind != "avgpool":
        return [f"task '{name}' has the degradation {degradation!r}; known types: 'avgpool', 'kspace'"]
    factor = degradation.get("factor")
    if not isinstance(factor, (list, tuple)) or len(factor) != 3:
        return [f"task '{name}' has the avgpool factor {factor!r}; give three integers (X, Y, Z)"]
    return []


def plans_problems(plans: dict) -> list[str]:
    """Every missing or inconsistent entry of `plans`, as readable sentences (empty: the plans are usable)."""
    problems = [f"missing top-level key '{key}'" for key in REQUIRED_TOP_LEVEL if key not in plans]
    for name, task in plans.get("tasks", {}).items():
        problems += [f"task '{name}' lacks '{key}'" for key in REQUIRED_TASK if key not in task]
        problems += _degradation_problems(name, task)
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
