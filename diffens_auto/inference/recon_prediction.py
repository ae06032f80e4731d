"""Reconstruction (recon tasks): measurement bundles CASE.npz in, magnitude images CASE.nii.gz out.

Per case (`prepare_recon_case`): the bundle is read and validated (imageio.kspace_bundle); its operator is
`FileOrderKSpace(reorientation, mask, fft_axes)`, the measured k-space in the file's own axes composed with the
canonical reorientation of `bundle_geometry(affine, shape)`; the zero-filled image A⁺y (canonical, complex) gives
the scale s = `zero_filled_params(|A⁺y|)` with the plans' percentiles, center 0, as training took it from A⁺Ax.
Measurement and zero-filled image are divided by s, so the prior and the data consistency work in training's units.

DDS (`dds_reconstruct`): the case is sampled on the bundle's own grid (no crop, no resampling), padded with the
background 0 to the networks' crop_multiples; the start is D3IP Eq. 16 from Re(A⁺y) (the prior is real-valued),
each step's x̂0, clipped at 0 (`X0_CLIP`), gets `cg_steps` CG steps of (γAᴴA + I) x = γAᴴy + x̂0 on the unpadded
region (D3IP Eq. 27-28) and the sampler is the task's `dds` plans section (DDIM in DDS's eta convention from
t' = 980; `recon_sampler`). The output is |x| · s on the bundle's grid, written in the file's axis order on its
affine.

The zero-filled baseline (`-c zero_filled`, `ZeroFilledReconstruction`) writes |A⁺y| through the same I/O and
summary, with the plans alone (no model is loaded).
"""
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

import diffens_auto
from diffens_auto.atomic import atomic_write_json
from diffens_auto.diffusion import dds_sample, sampler_from_plans
from diffens_auto.diffusion.padding import even_pads, pad_evenly, unpad
from diffens_auto.imageio import KSpaceBundle, read_kspace_bundle, write_image
from diffens_auto.inference.degrade_inputs import REFERENCE_SUFFIX
from diffens_auto.inference.input_cases import split_into_parts
from diffens_auto.inference.model import PredictionSetupError, load_task_plans
from diffens_auto.inference.predictor import RESUME_KEYS, check_same_settings, remove_stale_temporary_files
from diffens_auto.inference.previews import write_preview
from diffens_auto.inference.sampling_settings import SamplingSettings
from diffens_auto.inference.summary import PredictionSummary
from diffens_auto.intensity import DEFAULT_PERCENTILES
from diffens_auto.operators import FileOrderKSpace
from diffens_auto.planning.task_sections import DDS_SAMPLING, is_kspace
from diffens_auto.preprocessing.normalization import zero_filled_params

BUNDLE_ENDING, OUTPUT_ENDING = ".npz", ".nii.gz"
ZERO_FILLED = "zero_filled"
# what must match for --continue_prediction to keep earlier recon outputs
RECON_RESUME_KEYS = RESUME_KEYS + ("dc_gamma", "dc_steps")     # RESUME_KEYS holds "adaptation"
# D3IP's loop clips x̂0 before the data consistency: the objects are non-negative magnitudes, and with eps-prediction
# the large-t estimates swing far below 0, which |x| turns into bright speckle; no upper bound, since a real scan's
# brightest voxels reach 2.4 s while phantoms stay near 1.1 s
X0_CLIP = (0.0, float("inf"))
_SAMPLER_KEYS = ("sampler", "eta", "eta_convention", "timestep_spacing", "start_timestep", "num_inference_steps")


@dataclass
class BundleCase:
    """One bundle of an input folder, and what the summary row says about the files beside it."""

    case_id: str
    bundle: Path
    notes: list[str] = field(default_factory=list)


def find_bundle_cases(folder) -> tuple[list[BundleCase], list[Path]]:
    """(the CASE.npz bundles of `folder`, sorted; every other file, ignored); CASE_reference.* is noted on CASE."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictionSetupError(f"{folder}: input folder not found. Fix: give a folder of measurement bundles "
                                   "CASE.npz (diffens_degrade -t recon writes them).")
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    cases = {f.name[: -len(BUNDLE_ENDING)]: BundleCase(f.name[: -len(BUNDLE_ENDING)], f) for f in files
             if f.name.endswith(BUNDLE_ENDING)}
    if not cases:
        raise PredictionSetupError(f"{folder}: no measurement bundles CASE{BUNDLE_ENDING}. Fix: put the bundles "
                                   "there (diffens_degrade -t recon writes them; documentation/prediction.md has the "
                                   "format).")
    ignored = []
    for f in files:
        if f.name.endswith(BUNDLE_ENDING):
            continue
        case = cases.get(f.name.partition(REFERENCE_SUFFIX + ".")[0])
        if case is not None and f.name.startswith(case.case_id + REFERENCE_SUFFIX + "."):
            case.notes.append(f"{f.name} beside the bundle ignored (a reference for evaluation, not an input)")
        else:
            ignored.append(f)
    return [cases[k] for k in sorted(cases)], ignored


def bundle_operator(bundle: KSpaceBundle) -> FileOrderKSpace:
    """The bundle's operator: its mask and FFT axes in the file's axes, composed with the canonical reorientation."""
    return FileOrderKSpace(bundle.reorientation, torch.from_numpy(np.ascontiguousarray(bundle.mask)),
                           bundle.fft_axes)


def _slice_axis(reorientation: Mapping, fft_axes, planned: int) -> int:
    """The canonical axis A separates along (the file axis without FFT); the planned one when several or none."""
    permutation = list(reorientation["permutation"])
    free = [permutation.index(f) for f in range(3) if f not in fft_axes]
    return free[0] if len(free) == 1 or (free and planned not in free) else int(planned)


@dataclass
class ReconCase:
    """A bundle ready to reconstruct, in training's units (everything divided by the scale s)."""

    case_id: str
    operator: FileOrderKSpace
    measurement: torch.Tensor      # (1, 1, *file shape) complex64: y / s in the file's axes
    zero_filled: torch.Tensor      # (1, 1, X, Y, Z) complex64: A⁺y / s, canonical
    params: dict                   # {"center": 0.0, "half_range": s}
    props: dict                    # the bundle's canonical geometry: the output grid
    slice_axis: int                # the canonical axis DDS's start correlates its noise along
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple:
        """Canonical shape of the bundle's grid."""
        return tuple(self.zero_filled.shape[2:])


def spacing_note(props: Mapping, plans: Mapping) -> str | None:
    """A warning when the grid's spacing is off the target spacing by more than inference.recon_spacing_tolerance."""
    tolerance = plans.get("inference", {}).get("recon_spacing_tolerance")
    if tolerance is None:
        return None
    spacing, target = [float(s) for s in props["spacing"]], [float(t) for t in plans["target_spacing"]]
    drift = max(abs(s - t) / t for s, t in zip(spacing, target))
    if drift <= float(tolerance):
        return None
    return (f"warning: spacing {[round(s, 4) for s in spacing]} is {100 * drift:.0f} % off the target spacing "
            f"{target} the priors were trained at (inference.recon_spacing_tolerance {float(tolerance):g}); the "
            "case is sampled on its own grid, the reconstruction may be worse")


def prepare_recon_case(bundle: KSpaceBundle, plans: Mapping, task: str, case_id: str = "case") -> ReconCase:
    """The operator, scale, normalised measurement and zero-filled image of a bundle (module docstring)."""
    operator = bundle_operator(bundle)
    measured = torch.from_numpy(np.ascontiguousarray(bundle.kspace))[None, None]
    zero_filled = operator.pinv(measured)
    percentiles = plans.get("normalization", {}).get("percentiles", DEFAULT_PERCENTILES)
    params = zero_filled_params(zero_filled, percentiles)
    scale = params["half_range"]
    props = bundle.props
    planned = int(plans["tasks"][task]["degradation"].get("slice_axis", 2))
    note = spacing_note(props, plans)
    return ReconCase(case_id, operator, measured / scale, zero_filled / scale, params, props,
                     _slice_axis(operator.reorientation, operator.fft_axes, planned), [note] if note else [])


def zero_filled_magnitude(case: ReconCase) -> np.ndarray:
    """|A⁺y| in the measurement's own intensities (float32, canonical): the zero-filled baseline."""
    return (case.zero_filled[0, 0].abs().double() * case.params["half_range"]).float().numpy()


class _Interior:
    """A k-space operator seen from a padded volume: data consistency on the bundle's grid, the padding untouched."""

    def __init__(self, operator: FileOrderKSpace, pads):
        self.operator, self.pads = operator, pads

    def cg_data_consistency(self, x0_hat: torch.Tensor, y: torch.Tensor, gamma: float, num_steps: int):
        """The operator's DDS step on the unpadded region of x0_hat."""
        region = (..., *[slice(a, n - b) for (a, b), n in zip(self.pads, x0_hat.shape[-3:])])
        refined = x0_hat.clone()
        refined[region] = self.operator.cg_data_consistency(x0_hat[region], y, gamma, num_steps)
        return refined


def recon_pads(shape, multiples) -> list[tuple[int, int]]:
    """[(before, after)] per axis that pad a bundle's grid to the networks' multiples, split evenly."""
    return even_pads([-int(n) % int(m) for n, m in zip(shape, multiples)])


def dds_reconstruct(case: ReconCase, denoiser, sampler, pads, *, gamma: float, cg_steps: int, seed: int,
                    device="cpu", progress: bool = False, consistency=None) -> np.ndarray:
    """One DDS sample |x| · s of a prepared case (float32, canonical, on the bundle's grid).

    `denoiser(y_t, condition, t)` sees the case padded by `pads` (`recon_pads`), with a condition of 0 channels.
    `consistency` replaces the CG data consistency on the bundle's grid: anything with
    cg_data_consistency(x0_hat, y, gamma, num_steps) on the padded volume (mbir's TV-ADMM).
    """
    extras = [a + b for a, b in pads]
    # background 0 around the scan (training pads with the background, 0 in a scale-only normalisation)
    start_image = pad_evenly(case.zero_filled.real.to(device), extras, 0.0)[0]
    condition = start_image.new_zeros((1, 0, *start_image.shape[2:]))
    # the mask on the sampling device once, not copied there at every FFT of every CG step
    operator = FileOrderKSpace(case.operator.reorientation, case.operator.mask.to(device), case.operator.fft_axes)
    consistency = consistency or _Interior(operator, pads)
    x = dds_sample(denoiser, sampler, consistency, case.measurement.to(device), start_image,
                   slice_axis=case.slice_axis, gamma=gamma, cg_steps=cg_steps, clip=X0_CLIP, seed=seed,
                   condition=condition, progress=progress)
    return (unpad(x, pads)[0, 0].abs().double() * case.params["half_range"]).float().cpu().numpy()


def _dds_section(plans: Mapping, task: str) -> dict:
    """The task's dds plans section, DDS_SAMPLING's values (and the plans' step count) where it lacks a key."""
    defaults = {**DDS_SAMPLING, "num_inference_steps": plans["diffusion"].get("num_inference_steps", 50)}
    return {**defaults, **plans["tasks"][task].get("dds", {})}


def recon_sampler(plans: Mapping, task: str, sampling: SamplingSettings):
    """The DDS sampler of a recon task: the plans' dds section over their diffusion, --sampler/--eta/--steps and
    --start_timestep applied."""
    if sampling.consistency is False:
        raise PredictionSetupError("--no_consistency: a recon task's data consistency is DDS's CG, part of the "
                                   "sampler. Fix: leave the flag out (--dc_gamma 0 samples the prior alone).")
    dds = _dds_section(plans, task)
    diffusion = {**plans["diffusion"], **{key: dds[key] for key in _SAMPLER_KEYS}}
    if sampling.sampler is not None:
        diffusion["sampler"] = sampling.sampler
    if sampling.eta is not None:
        diffusion["eta"] = float(sampling.eta)
    if sampling.start_timestep is not None:
        diffusion["start_timestep"] = int(sampling.start_timestep)
    if diffusion["sampler"] == "ddim" and diffusion["eta_convention"] == "dds" and not 0 <= diffusion["eta"] <= 1:
        raise PredictionSetupError(f"eta {diffusion['eta']}: DDS's eta (eta_convention 'dds' of task '{task}') is in "
                                   "[0, 1] (sqrt(1 - eta^2) scales the noise estimate). Fix: --eta 0.85 or another "
                                   "value in [0, 1].")
    try:
        return sampler_from_plans(diffusion, num_steps=sampling.steps)
    except ValueError as e:
        raise PredictionSetupError(f"The dds section of task '{task}' in the plans cannot sample: {e}. Fix: correct "
                                   "it (documentation/prediction.md, Reconstruction).") from None


def dc_settings(plans: Mapping, task: str, sampling: SamplingSettings) -> tuple[float, int]:
    """(gamma, cg_steps) of the data consistency: --dc_gamma / --dc_steps, else the task's dds section."""
    dds = _dds_section(plans, task)
    gamma = dds["gamma"] if sampling.dc_gamma is None else sampling.dc_gamma
    steps = dds["cg_steps"] if sampling.dc_steps is None else sampling.dc_steps
    if not (isinstance(gamma, (int, float)) and gamma >= 0) or not (isinstance(steps, int) and steps >= 0):
        raise PredictionSetupError(f"dds gamma {gamma!r} and cg_steps {steps!r} of task '{task}': gamma is a number "
                                   ">= 0 and cg_steps an integer >= 0. Fix: correct the plans' dds section.")
    return float(gamma), int(steps)


def _plans_identity(plans: Mapping) -> str:
    return hashlib.sha256(json.dumps(plans, sort_keys=True).encode()).hexdigest()


class ZeroFilledReconstruction:
    """The zero-filled baseline |A⁺y| of a recon task: no model, the plans alone (for the scale's percentiles)."""

    num_samples = 1

    def __init__(self, dataset_name: str, plans: dict, task: str):
        """Keep the plans of the task (checked to be a recon task)."""
        if not is_kspace(plans["tasks"][task].get("degradation")):
            raise PredictionSetupError(f"-c {ZERO_FILLED}: the zero-filled baseline needs a recon task (a kspace "
                                       f"degradation); task '{task}' has none. Fix: choose a recon task with -t.")
        self.dataset_name, self.plans, self.task = dataset_name, plans, task

    def settings(self) -> dict:
        """What prediction_settings.json records (every resume key, None where a baseline has no such setting)."""
        none = {key: None for key in RECON_RESUME_KEYS}
        return {**none, "package_version": diffens_auto.__version__,
                "date": datetime.datetime.now().isoformat(timespec="seconds"), "dataset": self.dataset_name,
                "task": self.task, "configuration": ZERO_FILLED, "plans_name": self.plans["plans_name"],
                "plans_sha256": _plans_identity(self.plans), "checkpoints": [], "num_samples": 1, "device": "cpu"}

    def reconstruct(self, case: ReconCase) -> list[np.ndarray]:
        """[|A⁺y|] of the case."""
        return [zero_filled_magnitude(case)]


class DDSReconstruction:
    """DDS with a DiffensPredictor's loaded recon model as the prior (its strategy, sampler and settings)."""

    def __init__(self, predictor):
        """Keep the predictor (initialised with a recon task's model)."""
        self.predictor = predictor
        model = predictor.model
        self.plans, self.task = model.plans, model.task
        self.gamma, self.cg_steps = dc_settings(self.plans, self.task, predictor.sampling)
        self.num_samples = predictor.sampling.num_samples

    def settings(self) -> dict:
        """The predictor's settings with the data consistency's."""
        sampler = self.predictor.sampler
        return {**self.predictor.settings(), "dc_gamma": self.gamma, "dc_steps": self.cg_steps, "adaptation": None,
                "recon": {"start_timestep": int(sampler.timesteps[0]), "data_consistency": "D3IP Eq. 27-28, CG",
                          "eta_convention": getattr(sampler, "eta_convention", None)}}

    def reconstruct(self, case: ReconCase) -> list[np.ndarray]:
        """num_samples DDS samples of the case (sample i from seed + i)."""
        predictor = self.predictor
        pads = recon_pads(case.shape, self.plans["crop_multiples"])
        padded = [n + a + b for n, (a, b) in zip(case.shape, pads)]
        denoiser = predictor.case_denoiser(padded, pads, case.params)
        return [dds_reconstruct(case, denoiser, predictor.sampler, pads, gamma=self.gamma,
                                cg_steps=self.cg_steps, seed=predictor.sampling.seed + i, device=predictor.device,
                                progress=predictor.progress)
                for i in range(self.num_samples)]


def _output_paths(output_folder: Path, case_id: str, num_samples: int, previews: bool) -> dict[str, Path]:
    out = {"prediction": output_folder / f"{case_id}{OUTPUT_ENDING}"}
    if num_samples > 1:
        out["std"] = output_folder / f"{case_id}_std{OUTPUT_ENDING}"
    if previews:
        out["preview"] = output_folder / f"{case_id}.png"
    return out


def _predict_bundle(reconstruction, case: BundleCase, outputs: Mapping[str, Path]) -> list[str]:
    """Reconstruct one bundle and write its files (the prediction last); returns the notes of its summary row."""
    prepared = prepare_recon_case(read_kspace_bundle(case.bundle), reconstruction.plans, reconstruction.task,
                                  case.case_id)
    stacked = np.stack(reconstruction.reconstruct(prepared))
    write_extra_outputs = getattr(reconstruction, "write_extra_outputs", None)
    if write_extra_outputs is not None:       # before the prediction, whose presence means the case is done
        write_extra_outputs(outputs)
    mean = stacked.mean(axis=0).astype(np.float32)
    std = stacked.std(axis=0).astype(np.float32) if len(stacked) > 1 else None
    if std is not None:
        write_image(std, prepared.props, outputs["std"])
    if "preview" in outputs:
        rows = [("zero-filled", zero_filled_magnitude(prepared)), ("output", mean)] + ([("std", std)] if std is not
                                                                                      None else [])
        write_preview(outputs["preview"], rows, prepared.props["spacing"], title=case.case_id)
    write_image(mean, prepared.props, outputs["prediction"])    # last: its presence means the case is done
    return case.notes + prepared.notes


def _check_folders(input_folder: Path, output_folder: Path, num_parts: int, part_id: int) -> None:
    if input_folder.resolve() == output_folder.resolve():
        raise PredictionSetupError(f"-o {output_folder} is the input folder. Fix: write predictions elsewhere.")
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise PredictionSetupError(f"-num_parts {num_parts} -part_id {part_id}: part_id must be in "
                                   "0..num_parts-1. Fix: give 0 <= part_id < num_parts.")


def predict_recon_folder(reconstruction, input_folder, output_folder, continue_prediction: bool = False, *,
                         num_parts: int = 1, part_id: int = 0, progress: bool = True, previews: bool = False) -> dict:
    """Reconstruct every bundle of `input_folder` into `output_folder`; returns the summary (also written there).

    As DiffensPredictor.predict_from_files: a failing case (a malformed bundle, ...) is recorded and skipped,
    `continue_prediction` keeps finished cases, num_parts/part_id predict every num_parts-th case.
    """
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    _check_folders(input_folder, output_folder, num_parts, part_id)
    found, ignored = find_bundle_cases(input_folder)
    cases = split_into_parts(found, num_parts, part_id)
    output_folder.mkdir(parents=True, exist_ok=True)
    summary = PredictionSummary(output_folder, num_parts, part_id)
    settings = {**reconstruction.settings(), "input_folder": str(input_folder), "output_folder": str(output_folder),
                "continue_prediction": continue_prediction, "num_parts": num_parts, "part_id": part_id,
                "previews": previews, "ignored_files": [f.name for f in ignored]}
    if continue_prediction:
        check_same_settings(summary.settings_file, settings, keys=RECON_RESUME_KEYS)
    if num_parts == 1:      # parts share the folder: another part's write in progress must not be removed
        remove_stale_temporary_files(output_folder)
    atomic_write_json(settings, summary.settings_file)
    for case in tqdm(cases, desc="cases", unit="case", disable=not progress):
        outputs = _output_paths(output_folder, case.case_id, reconstruction.num_samples, previews)
        extra_outputs = getattr(reconstruction, "extra_outputs", None)
        if extra_outputs is not None:
            outputs.update(extra_outputs(output_folder, case.case_id))
        inputs = {"bundle": case.bundle}
        if continue_prediction and all(p.is_file() for p in outputs.values()):
            summary.add(case.case_id, "skipped", "already predicted (--continue_prediction)", 0.0, outputs=outputs,
                        inputs=inputs)
            continue
        summary.run_case(case.case_id, lambda: "; ".join(_predict_bundle(reconstruction, case, outputs)),
                         outputs=outputs, inputs=inputs)
        summary.write()
    summary.write()
    return summary.as_dict()


def zero_filled_from_files(dataset, task: str, input_folder, output_folder, plans_name: str | None = None, *,
                           continue_prediction: bool = False, num_parts: int = 1, part_id: int = 0,
                           progress: bool = True, previews: bool = False) -> dict:
    """`diffens_predict -c zero_filled`: write |A⁺y| of every bundle, with the task's plans and no model."""
    dataset_name, plans = load_task_plans(dataset, task, plans_name)
    return predict_recon_folder(ZeroFilledReconstruction(dataset_name, plans, task), input_folder, output_folder,
                                continue_prediction, num_parts=num_parts, part_id=part_id, progress=progress,
                                previews=previews)
