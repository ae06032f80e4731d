"""Experiment planning: from a dataset fingerprint and its tasks to the plans every later stage reads."""
import math

from .memory import estimate_inference_memory, estimate_training_memory
from .presets import Preset, get_preset
from .task_sections import PlanningError, is_kspace, plan_task
from .topology import (EXPERT_PLANES, PLANE_NAMES, axis_multiples, choose_num_levels, ensembler_in_channels,
                       ensembler_network, expert_in_channels, expert_network, extent_at_spacing, feature_injection,
                       round_up, target_spacing_for)

ENSEMBLERS = {"3d_ensembler": False, "3d_ensembler_small": True}   # configuration -> small variant
RESAMPLING = {"order": 3, "order_z": 0, "anisotropy_threshold": 3.0}
PERCENTILES = (0.5, 99.5)
SLIDING_WINDOW_OVERLAP = 0.5
# SR inputs whose output grid (input grid x factor) is within this relative distance of the target spacing on every
# axis are sampled on that grid, where the per-step projection pools exactly the input's blocks; others are resampled
# and only finally projected. 1.0 (up to twice the target spacing): on 8 held-out phantoms 3-64 % off the target
# spacing, sampling on their own grid gained 0.3-0.8 dB for every method over resampling (documentation/benchmarks.md)
SR_SPACING_TOLERANCE = 1.0
GAUSSIAN_SIGMA_SCALE = 0.125
# a recon case is sampled on its scan's own grid; a spacing more than this far (relative, per axis) from the target
# spacing the priors were trained at gets a warning in its summary row (a guess of what priors tolerate, not measured)
RECON_SPACING_TOLERANCE = 0.25


def plan_experiment(fingerprint: dict, tasks: dict, channel_names: dict, dataset_name: str,
                    gpu_memory_target_gb: float = 24.0, *, preset: str = "default") -> dict:
    """Plan spacing, crop, expert and ensembler topologies, batch sizes and training schedule within the budget."""
    p = get_preset(preset)
    names = {int(k): str(v) for k, v in channel_names.items()}
    residuals = fingerprint.get("residual_statistics_per_channel", {})
    task_sections = {name: plan_task(name, task, names, p, residuals) for name, task in tasks.items()}
    if not task_sections:
        raise PlanningError("No tasks to plan: give at least one task (dataset.json 'tasks', e.g. a default 'sr').")
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    target_spacing = target_spacing_for(spacings, shapes, RESAMPLING["anisotropy_threshold"])
    extent = extent_at_spacing(shapes, spacings, target_spacing)
    levels = choose_num_levels(extent, p.num_levels, p.min_feature_size)
    multiples = axis_multiples(2 ** (levels - 1), task_sections)
    crop = round_up(extent, multiples)

    fitter = _Fitter(p, gpu_memory_target_gb, crop=crop, levels=levels, multiples=multiples, tasks=task_sections)
    configurations = {name: fitter.fit_expert(name, axis) for name, axis in EXPERT_PLANES.items()}
    experts = {name: configurations[name] for name in p.ensembler_experts}
    for name, small in ENSEMBLERS.items():
        configurations[name] = fitter.fit_ensembler(name, experts, small)
    slice_batch_size = fitter.choose_slice_batch_size(configurations)
    for configuration in configurations.values():
        fitter.record_estimates(configuration, configurations, slice_batch_size)

    return {
        "plans_name": p.plans_name,
        "preset": p.name,
        "data_identifier": p.plans_name,
        "dataset_name": dataset_name,
        "channel_names": {str(k): v for k, v in sorted(names.items())},
        "dtype": p.dtype,
        "target_spacing": target_spacing,
        "crop_size": crop,
        "crop_multiples": multiples,
        "num_levels": levels,
        "gpu_memory_target_gb": float(gpu_memory_target_gb),
        "resampling": dict(RESAMPLING),
        "normalization": _normalization(fingerprint, names),
        "diffusion": _diffusion(p),
        "tasks": task_sections,
        "configurations": configurations,
        "training": {"expert": dict(p.expert_training), "ensembler": dict(p.ensembler_training)},
        "inference": {"sliding_window_overlap": SLIDING_WINDOW_OVERLAP, "gaussian_sigma_scale": GAUSSIAN_SIGMA_SCALE,
                      "slice_batch_size": slice_batch_size, "sr_spacing_tolerance": SR_SPACING_TOLERANCE,
                      "recon_spacing_tolerance": RECON_SPACING_TOLERANCE},
        "memory_model": {"workspace_gb": p.workspace_gb, "units": "GB = 2**30 bytes",
                         "documentation": "documentation/planning.md"},
    }


def network_for_task(plans: dict, configuration: str, task: str) -> dict:
    """The configuration's network dict with the in_channels of `task` (what a network builder takes)."""
    config = plans["configurations"][configuration]
    network = dict(config["network"])
    network["in_channels"] = config["in_channels_per_task"][task]
    if task in config.get("mask_channels_per_task", {}):
        network["mask_channels"] = int(config["mask_channels_per_task"][task])
    elif network.get("mask_channels"):       # a plans edit: the mask for every task with a condition
        network["mask_channels"] = task_mask_channels(network["mask_channels"],
                                                      len(plans["tasks"][task]["condition_channels"]))
    return network


def task_mask_channels(mask_channels: int, num_conditions: int, pooled: bool = False) -> int:
    """An expert's mask channels for a task: none for an unconditional prior (a k-space task, no condition to take
    a mask of), and none where the condition holds a pooled target (SR, both): its blocks already say where the
    input is 0, and the mask cost the SR demo 0.13-0.17 dB (documentation/benchmarks.md)."""
    return int(mask_channels) if num_conditions and not pooled else 0


# ---------------------------------------------------------------- normalization, diffusion


def _normalization(fingerprint: dict, channel_names: dict) -> dict:
    """Percentile-affine normalisation with dataset-level parameters per channel from the fingerprint."""
    stats = fingerprint.get("foreground_intensity_properties_per_channel", {})
    dataset = {}
    for channel in sorted(channel_names):
        props = stats.get(str(channel), stats.get(channel))
        if props is None:
            raise PlanningError(f"The fingerprint has no intensity statistics for channel {channel}; "
                                "re-run the fingerprint extraction.")
        lo, hi = float(props["percentile_00_5"]), float(props["percentile_99_5"])
        half_range = (hi - lo) / 2
        dataset[str(channel)] = {"center": (lo + hi) / 2, "half_range": half_range if half_range > 0 else 1.0}
    return {"scheme": "percentile_affine", "percentiles": list(PERCENTILES), "dataset": dataset}


def _diffusion(p: Preset) -> dict:
    # respaced ancestral DDPM (the authors' sampler): on the demo's SR models it tied DDIM with eta 1 and beat
    # deterministic DDIM by 0.2-0.4 dB (documentation/diffusion.md); "eta" stays for a user's --sampler ddim
    return {"num_train_steps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
            "sampler": "ddpm", "eta": 0.0, "num_inference_steps": p.num_inference_steps,
            "timestep_spacing": "leading", "ddpm_timestep_spacing": "guided", "ddpm_variance": "fixed_small",
            "clip_x0": True, "consistency_projection": True}


# ---------------------------------------------------------------- fitting into the memory budget


def _shape_str(shape) -> str:
    return "x".join(str(s) for s in shape)


class _Fitter:
    """Chooses batch sizes, channel scales and ensembler patches so every estimate fits the budget."""

    def __init__(self, p: Preset, budget_gb: float, *, crop, levels: int, multiples, tasks: dict):
        self.p, self.budget, self.crop, self.levels, self.multiples = p, budget_gb, list(crop), levels, multiples
        self.conditions = {name: len(task["condition_channels"]) for name, task in tasks.items()}
        self.pooled = {name: (task.get("degradation") or {}).get("type") == "avgpool" for name, task in tasks.items()}
        # a reconstruction task's sampling also holds its measurement and the DDS data-consistency state
        self.kspace = any(is_kspace(task["degradation"]) for task in tasks.values())

    def training(self, configuration: dict, experts: dict | None = None):
        """Training estimate; an ensembler's is the larger of pretraining (patch) and fine-tuning."""
        def estimate(shape):
            return estimate_training_memory(configuration, self.p.dtype, experts=experts, shape=shape,
                                            workspace_gb=self.p.workspace_gb)
        if configuration["kind"] != "ensembler":
            return estimate(configuration["patch_size"])
        return max(estimate(configuration["patch_size"]), estimate(configuration["fine_tune_shape"]),
                   key=lambda e: e.total_bytes)

    def inference(self, configuration: dict, experts: dict | None = None, slice_batch_size: int = 1):
        """Estimate of sampling one crop-sized volume."""
        return estimate_inference_memory(configuration, self.p.dtype, volume_shape=self.crop, experts=experts,
                                         slice_batch_size=slice_batch_size, workspace_gb=self.p.workspace_gb,
                                         kspace=self.kspace)

    def _worst(self, configuration: dict, experts: dict | None = None) -> float:
        return max(self.training(configuration, experts).total_gb, self.inference(configuration, experts).total_gb)

    def _fail(self, name: str, smallest: float, tried: str):
        raise PlanningError(
            f"Configuration '{name}' does not fit the GPU memory budget of {self.budget:g} GB even at {tried}: "
            f"the smallest estimate is {smallest:.2f} GB. Raise -gpu_memory_target, or use a smaller preset "
            "(-pl tiny), or edit the plans by hand.")

    def _fallbacks(self, preset_batch: int, batch: int, scale: float, network: dict) -> list[str]:
        steps = []
        if batch < preset_batch:
            steps.append(f"batch_size {preset_batch} -> {batch} to fit {self.budget:g} GB")
        if scale < 1.0:
            steps.append(f"channels scaled by {scale:g} to {network['channels']} to fit {self.budget:g} GB")
        return steps

    def fit_expert(self, name: str, axis: int) -> dict:
        """Largest channel scale, then largest batch (>= the preset minimum) whose estimates fit."""
        p = self.p
        plane = [s for i, s in enumerate(self.crop) if i != axis]
        masks = {t: task_mask_channels(p.mask_channels, n, self.pooled[t]) for t, n in self.conditions.items()}
        in_per_task = {t: expert_in_channels(n, p.context_slices, p.position_channels, masks[t])
                       for t, n in self.conditions.items()}
        widest = max(in_per_task, key=in_per_task.get)
        smallest = math.inf
        for scale in p.channel_scales:
            # the network dict is the widest task's (what the memory model sizes); network_for_task gives each task's
            network = {**expert_network(p, plane, self.levels, in_per_task[widest], scale),
                       "mask_channels": masks[widest]}
            for batch in range(p.expert_batch_size, p.min_batch_size - 1, -1):
                configuration = {"kind": "expert", "plane": PLANE_NAMES[axis], "slice_axis": axis,
                                 "patch_size": plane, "batch_size": batch, "network": network,
                                 "in_channels_per_task": in_per_task, "mask_channels_per_task": masks}
                worst = self._worst(configuration)
                smallest = min(smallest, worst)
                if worst <= self.budget:
                    configuration["memory_fallbacks"] = self._fallbacks(p.expert_batch_size, batch, scale, network)
                    return configuration
        self._fail(name, smallest, f"batch size {p.min_batch_size} and channels x{p.channel_scales[-1]:g}")

    def _ensembler(self, experts: dict, small: bool, scale: float, fine_tune_shape) -> dict:
        p = self.p
        in_per_task = {t: ensembler_in_channels(n, len(experts)) for t, n in self.conditions.items()}
        network = ensembler_network(p, fine_tune_shape, self.levels, max(in_per_task.values()), len(experts),
                                    small=small, scale=scale)
        if not small:
            network["feature_injection"] = feature_injection(experts, network, fine_tune_shape)
        pretrain = [min(f, max(m, p.ensembler_pretrain_patch // m * m))
                    for f, m in zip(fine_tune_shape, self.multiples)]
        return {"kind": "ensembler", "experts": list(experts), "patch_size": pretrain,
                "fine_tune_shape": list(fine_tune_shape), "patch_wise": list(fine_tune_shape) != self.crop,
                "batch_size": p.ensembler_batch_size, "expert_slice_batch_size": 1, "network": network,
                "in_channels_per_task": in_per_task}

    def fit_ensembler(self, name: str, experts: dict, small: bool) -> dict:
        """Full volume at the largest fitting channel scale; else patch-wise at the smallest scale."""
        configuration = self._fit_ensembler_shape(name, experts, small)
        # then as many expert slices per call as still fit (ensembler training runs the experts on its input)
        size = 2 ** int(math.log2(self.p.max_slice_batch_size))
        while size > 1:
            trial = dict(configuration, expert_slice_batch_size=size)
            if self.training(trial, experts).total_gb <= self.budget:
                configuration["expert_slice_batch_size"] = size
                break
            size //= 2
        return configuration

    def _fit_ensembler_shape(self, name: str, experts: dict, small: bool) -> dict:
        p = self.p
        smallest, full_volume_gb = math.inf, None
        for scale in p.channel_scales:
            configuration = self._ensembler(experts, small, scale, self.crop)
            worst = self._worst(configuration, experts)
            full_volume_gb = worst if full_volume_gb is None else full_volume_gb
            smallest = min(smallest, worst)
            if worst <= self.budget:
                configuration["memory_fallbacks"] = self._fallbacks(p.ensembler_batch_size, p.ensembler_batch_size,
                                                                    scale, configuration["network"])
                return configuration
        scale = p.channel_scales[-1]
        minimum = [min(c, round_up([2 ** (self.levels - 1) * p.min_feature_size], [m])[0])
                   for c, m in zip(self.crop, self.multiples)]
        shape = list(self.crop)
        while True:
            shrinkable = [i for i in range(3) if shape[i] - self.multiples[i] >= minimum[i]]
            if not shrinkable:
                self._fail(name, smallest, f"channels x{scale:g} and patch-wise fine-tuning on "
                                           f"{_shape_str(shape)} patches")
            axis = max(shrinkable, key=lambda i: shape[i])
            shape[axis] -= self.multiples[axis]
            configuration = self._ensembler(experts, small, scale, shape)
            worst = self._worst(configuration, experts)
            smallest = min(smallest, worst)
            if worst <= self.budget:
                configuration["memory_fallbacks"] = self._fallbacks(
                    p.ensembler_batch_size, p.ensembler_batch_size, scale, configuration["network"]) + [
                    f"patch_wise: fine-tuning on the full {_shape_str(self.crop)} crop needs {full_volume_gb:.2f} GB "
                    f"(at channels x1); fine-tuning on {_shape_str(shape)} patches instead, inference by Gaussian "
                    f"sliding window (overlap {SLIDING_WINDOW_OVERLAP})"]
                return configuration

    def choose_slice_batch_size(self, configurations: dict) -> int:
        """Largest power of two (<= the preset maximum) of slices per expert call that keeps inference fitting."""
        size = 2 ** int(math.log2(self.p.max_slice_batch_size))
        while size > 1:
            if all(self.inference(c, self._experts_of(c, configurations), size).total_gb <= self.budget
                   for c in configurations.values()):
                return size
            size //= 2
        return 1

    @staticmethod
    def _experts_of(configuration: dict, configurations: dict) -> dict:
        return {name: configurations[name] for name in configuration.get("experts", [])}

    def record_estimates(self, configuration: dict, configurations: dict, slice_batch_size: int) -> None:
        """Write the training and inference estimates (and their breakdown) into the configuration."""
        experts = self._experts_of(configuration, configurations)
        training = self.training(configuration, experts)
        inference = self.inference(configuration, experts, slice_batch_size)
        configuration["memory_estimate_gb"] = round(training.total_gb, 3)
        configuration["inference_memory_estimate_gb"] = round(inference.total_gb, 3)
        configuration["memory_estimate_breakdown"] = {"training": training.as_gb(), "inference": inference.as_gb()}
