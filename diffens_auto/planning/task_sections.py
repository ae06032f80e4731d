"""The plans' entry of one task: its degradation, conditions, diffusion space and target normalisation.

Three kinds of task (documentation/planning.md):
- no degradation (modality translation): noise of the target (`epsilon_target`, eps-prediction) in the dataset's
  normalisation, conditioned on the inputs;
- an `avgpool` degradation (super-resolution): noise of the scaled residual (`epsilon_residual`, v-prediction),
  the target scaled by the degraded volume's percentiles, conditioned on the inputs and the degraded target, with
  the residual scale and x0 clip measured by the fingerprint;
- a `kspace` degradation (reconstruction): an unconditional prior (no condition channels) of the target
  (`epsilon_target`, eps-prediction), scaled by the zero-filled image alone (`degraded:KEY`, center 0), with
  the `dds` settings its prediction samples with (DDIM in DDS's eta convention, the CG data consistency).
"""
import copy
import math
from collections.abc import Mapping

from diffens_auto.dataset.dataset_json import KSPACE_DEFAULTS, KSPACE_MASKS, degradation_key
from diffens_auto.errors import DiffensError

from .presets import Preset

# the fields of a planned kspace degradation, every default written out (as KSpaceDegradationSpec.to_dict)
KSPACE_FIELDS = ("type", "mask", "acceleration", *KSPACE_DEFAULTS)
# how a recon task samples (D3IP.md's defaults): DDIM with DDS's eta from t' = 980 ("linspace" from
# start_timestep 980 visits 980, 960, ..., 0 for 50 steps and keeps 980 first for any other count), and
# gamma / cg_steps of the CG data consistency (D3IP Eq. 27-28); num_inference_steps is the preset's
DDS_SAMPLING = {"sampler": "ddim", "eta": 0.85, "eta_convention": "dds", "timestep_spacing": "linspace",
                "start_timestep": 980, "gamma": 5.0, "cg_steps": 5}

# D3IP's test-time adaptation of a recon task's prior (D3IP.md; the paper's Tab. 5, 3D MRI column): one LoRA set of
# rank 4 (scale 1), K = 6 slices per optimiser step, adapted for 40 <= t <= T - 40, AdamW's weight decay 0.01; steps
# and learning rate per variant, TV-ADMM's rho / lambda / passes for mbir, Reptile's alpha 1.0 -> 0.5 for meta;
# gamma and CG steps are the dds section's, so DDS and D3IP differ by the adaptation alone. mbir and meta differ
# from Tab. 5 by measurement (documentation/benchmarks.md, "D3IP-mbir's and D3IP-meta's settings"): Tab. 5's
# lr 1e-5 barely adapts here (meta 29.24 -> 30.37 dB at 1e-4), and its TV weight (lambda 1e-5, rho 1e-3) is
# negligible on this project's normalised intensities: lambda 3e-2, rho 3e-1 gave 33.4 dB on a held-out brain
# phantom against d3ip's 31.1 (30.6 with Tab. 5's TV), chosen on that phantom and checked on another (33.5 against
# 31.1), on the real T1 and on the control
KSPACE_ADAPTATION = {"lora_rank": 4, "lora_scale": 1.0, "slices": 6, "horizon": 40, "weight_decay": 0.01,
                     "d3ip": {"steps": 10, "lr": 1e-4},
                     "d3ip_mbir": {"steps": 10, "lr": 1e-4, "tv_rho": 3e-1, "tv_lambda": 3e-2, "admm_steps": 5},
                     "d3ip_meta": {"steps": 10, "lr": 1e-4, "meta_alpha": [1.0, 0.5]},
                     "ddip": {"steps": 10, "lr": 1e-5}}
# the same for an average-pooled SR task (documentation/adaptation.md, "SR tasks"): `slices` counts whole blocks of
# slices along the expert's axis; dc_gamma / dc_steps are the soft estimate's (exact in closed form for pooling, so
# the CG steps serve mbir's TV-ADMM only). The learning rate is measured on the SR demo's models (out-of-
# distribution inputs: 1e-3 gained 0.5-0.7 dB on ellipsoid phantoms where 1e-4 gained 0.2); the other variants take
# d3ip's, unmeasured
POOLED_ADAPTATION = {"lora_rank": 4, "lora_scale": 1.0, "slices": 4, "horizon": 40, "weight_decay": 0.01,
                     "dc_gamma": 5.0, "dc_steps": 5,
                     "d3ip": {"steps": 10, "lr": 1e-3},
                     "d3ip_mbir": {"steps": 10, "lr": 1e-3, "tv_rho": 1e-3, "tv_lambda": 1e-5, "admm_steps": 5},
                     "d3ip_meta": {"steps": 10, "lr": 1e-3, "meta_alpha": [1.0, 0.5]},
                     "ddip": {"steps": 10, "lr": 1e-3}}


class PlanningError(DiffensError, ValueError):
    """Raised when the inputs cannot be planned (malformed tasks, or nothing fits the memory budget)."""


def field_of(task, name, default=None):
    """A field of a task or degradation given as a dict or as an object with attributes (TaskSpec)."""
    if isinstance(task, Mapping):
        return task.get(name, default)
    return getattr(task, name, default)


def is_kspace(degradation) -> bool:
    """Whether a (planned or dataset) degradation undersamples k-space."""
    return bool(degradation) and field_of(degradation, "type") == "kspace"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kspace_problem(fields: Mapping) -> tuple[str, str] | None:
    """(field, what it must be) of the first invalid field of a kspace degradation with defaults filled in."""
    checks = (
        ("mask", fields["mask"] in KSPACE_MASKS, f"one of {list(KSPACE_MASKS)}"),
        ("acceleration", _is_number(fields["acceleration"]) and fields["acceleration"] > 1, "a finite number > 1"),
        ("acs", isinstance(fields["acs"], int) and not isinstance(fields["acs"], bool) and fields["acs"] >= 0,
         "an integer >= 0"),
        ("slice_axis", fields["slice_axis"] in (0, 1, 2) and not isinstance(fields["slice_axis"], bool),
         "0, 1 or 2"),
        ("noise_std", _is_number(fields["noise_std"]) and fields["noise_std"] >= 0, "a finite number >= 0"),
        ("mask_per_slice", isinstance(fields["mask_per_slice"], bool), "true or false"),
    )
    return next(((name, must) for name, ok, must in checks if not ok), None)


def _kspace_degradation(task_name: str, degradation) -> dict:
    """The kspace degradation as the plans write it (every default filled in), checked field by field."""
    if hasattr(degradation, "to_dict"):
        degradation = degradation.to_dict()
    elif not isinstance(degradation, Mapping):
        degradation = {key: getattr(degradation, key) for key in KSPACE_FIELDS if hasattr(degradation, key)}
    unknown = sorted(set(degradation) - set(KSPACE_FIELDS))
    missing = [key for key in ("mask", "acceleration") if key not in degradation]
    if unknown or missing:
        raise PlanningError(f"Task '{task_name}': its kspace degradation has unknown fields {unknown} or lacks "
                            f"{missing}. Fix: give exactly the fields {list(KSPACE_FIELDS)} (mask and acceleration "
                            "are required; documentation/dataset_format.md).")
    fields = {**KSPACE_DEFAULTS, **degradation}
    problem = _kspace_problem(fields)
    if problem:
        raise PlanningError(f"Task '{task_name}': degradation field '{problem[0]}' is {fields[problem[0]]!r}; it "
                            f"must be {problem[1]}. Fix: correct it in the tasks of dataset.json.")
    return {"type": "kspace", "mask": str(fields["mask"]), "acceleration": float(fields["acceleration"]),
            "acs": int(fields["acs"]), "slice_axis": int(fields["slice_axis"]),
            "noise_std": float(fields["noise_std"]), "mask_per_slice": bool(fields["mask_per_slice"])}


def planned_degradation(task_name: str, degradation) -> dict | None:
    """The plans' form of a task's degradation: None, {"type": "avgpool", "factor"} or the full kspace dict."""
    if degradation is None:
        return None
    kind = field_of(degradation, "type")
    if kind == "kspace":
        return _kspace_degradation(task_name, degradation)
    factor = field_of(degradation, "factor")
    if kind != "avgpool":
        raise PlanningError(f"Task '{task_name}': unknown degradation type {kind!r}. Fix: use 'avgpool' "
                            "(super-resolution) or 'kspace' (reconstruction) in the tasks of dataset.json.")
    if not factor or len(factor) != 3 or any(int(f) != f or f < 1 for f in factor):
        raise PlanningError(f"Task '{task_name}': degradation factor must be three positive integers (X, Y, Z), "
                            f"got {factor!r}.")
    return {"type": str(kind), "factor": [int(f) for f in factor]}


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def residual_scaling(name: str, target: int, degradation: dict, residuals: Mapping) -> dict:
    """residual_scale (unit RMS of the scaled residual) and clip_x0 (its largest measured magnitude) of an SR task."""
    key = degradation_key(degradation)
    stats = residuals.get(str(target), {}).get(key)
    if stats is None:
        raise PlanningError(f"Task '{name}': the fingerprint has no residual statistics of channel {target} under "
                            f"{key} (a fingerprint from an older version, or made by hand). Fix: re-run "
                            "diffens_plan_and_preprocess (it extracts the fingerprint again).")
    rms = float(stats["rms"])
    if not rms > 0:
        # a target without structure inside the blocks: nothing to rescale
        return {"residual_scale": 1.0, "clip_x0": 1.0}
    scale = _significant(1.0 / rms)
    # the largest residual seen on the training cases, in scaled units: clipping there never cuts a true value
    return {"residual_scale": scale, "clip_x0": math.ceil(float(stats["abs_max"]) * scale * 10) / 10}


def _diffusion_space(name: str, target: int, degradation: dict | None, residuals: Mapping) -> dict:
    """parametrization, prediction, target_normalization (and an SR task's residual scaling) of a task."""
    if degradation is None:
        return {"parametrization": "epsilon_target", "prediction": "epsilon", "target_normalization": "dataset"}
    key = degradation_key(degradation)
    if degradation["type"] == "kspace":
        # an unconditional prior of the target itself, scaled (center 0) by its zero-filled image: an offset
        # would put a spike at the k-space centre, and prediction has only the measurement to take a scale from
        return {"parametrization": "epsilon_target", "prediction": "epsilon", "target_normalization": f"degraded:{key}"}
    # v for SR: with eps the x0 estimate of a briefly trained expert at large t was far worse than x0 = 0
    # (documentation/benchmarks.md); MT and recon keep eps until measured
    return {"parametrization": "epsilon_residual", "prediction": "v", "target_normalization": f"degraded:{key}",
            **residual_scaling(name, target, degradation, residuals)}


def plan_task(name: str, task, channel_names: dict, p: Preset, residuals: Mapping) -> dict:
    """The plans' entry of one task (documentation/planning.md), from a plain dict or a TaskSpec."""
    target, inputs = field_of(task, "target"), [int(i) for i in field_of(task, "inputs", ()) or ()]
    unknown = [c for c in [target, *inputs] if c not in channel_names]
    if target is None or unknown:
        raise PlanningError(f"Task '{name}': channel(s) {unknown or [target]} are not in channel_names "
                            f"{channel_names}; use channel indices of dataset.json.")
    degradation = planned_degradation(name, field_of(task, "degradation"))
    if is_kspace(degradation) and inputs:
        raise PlanningError(f"Task '{name}': a kspace task reconstructs its target from the measurement alone (its "
                            f"experts are unconditional priors), but it lists inputs {inputs}. Fix: write "
                            '"inputs": [] in dataset.json.')
    # the average-pooled target is a condition; a k-space measurement is not (the priors are unconditional)
    pooled = degradation is not None and degradation["type"] == "avgpool"
    space = _diffusion_space(name, int(target), degradation, residuals)
    section = {
        "target": int(target),
        "target_name": channel_names[int(target)],
        "inputs": inputs,
        "input_names": [channel_names[i] for i in inputs],
        "degradation": degradation,
        "condition_channels": inputs + ([int(target)] if pooled else []),
        "parametrization": space.pop("parametrization"),
        "prediction": space.pop("prediction"),
        "target_normalization": space.pop("target_normalization"),
        "input_normalization": "case",
        "ensembler_lambda": p.ensembler_lambda,
        **space,
    }
    if is_kspace(degradation):
        section["dds"] = {**DDS_SAMPLING, "num_inference_steps": p.num_inference_steps}
        section["adaptation"] = copy.deepcopy(KSPACE_ADAPTATION)
    elif pooled:
        section["adaptation"] = copy.deepcopy(POOLED_ADAPTATION)
    return section
