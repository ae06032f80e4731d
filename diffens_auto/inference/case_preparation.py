"""One case's inputs turned into what sampling needs, and the sampled target turned back into an image.

Output grid. A task with a degradation (SR) and `input_grid="lr"`: the low-resolution input alone defines it,
`operators.highres_grid` (shape x factor, same direction, each input voxel's centre at its block's centre; when the
task also has high-resolution inputs whose shape pools to the input's, theirs is the shape: a partial last block).
`input_grid="hr"`: the input is already on the output grid and the measurement is A(input). Without a
degradation (MT) the output grid is the inputs' grid. Other inputs of the task (the T1ce of "both") must lie on
the output grid.

Forward: the degraded target channel is up(lr), trilinear with block-centre alignment (the training condition's
up(A(target))); it and the task's other inputs are zeroed outside the blocks whose input is non-zero (so the crop
starts on a block boundary), then cropped,
resampled and normalised exactly as training data (`preprocess_arrays`). The target's intensity scale comes from
the low-resolution input itself (its "degraded" parameter set, as training computed it from A(target)); an MT
target's from the dataset statistics. Per-step consistency works on the preprocessed grid with the measurement
A(nearest-neighbour up(lr)) resampled there. Sampling grid (`sampling_spacing`): an SR output grid whose spacing is
within the plans' `inference.sr_spacing_tolerance` (relative, per axis) of the target spacing is sampled at its own
spacing, so preprocessing only crops and the per-step projection pools exactly the input's blocks; beyond the
tolerance the case is resampled to the target spacing and only the final projection is applied (blocks of a
resampled grid drift against the input's). Plans without the key resample every case and project per step on the
resampled grid, as before.

Back: invert the preprocessing onto the output grid, zero everything outside the input's non-zero blocks, then
apply the consistency projection in original intensities on that grid, so A(output) = input holds exactly
whatever the pipeline resampled inside.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from diffens_auto.dataset.dataset_json import degradation_key
from diffens_auto.diffusion.padding import even_pads, pad_evenly
from diffens_auto.errors import DiffensError
from diffens_auto.imageio import check_same_geometry
from diffens_auto.operators import avgpool_downsample, highres_grid, operator_for, upsample_to_grid
from diffens_auto.preprocessing.inversion import invert_preprocessing
from diffens_auto.preprocessing.normalization import DEFAULT_PERCENTILES, normalize, params_from_lowres
from diffens_auto.preprocessing.preprocessor import preprocess_arrays
from diffens_auto.preprocessing.resampling import resample_data
from diffens_auto.tasks.conditioning import (condition_background, condition_mask, target_from_y0, task_background,
                                             task_normalization, task_volumes, y0_from_target)

INPUT_GRIDS = ("lr", "hr")


class CaseInputError(DiffensError, ValueError):
    """A case's input images cannot be predicted as given; the message names the file and the fix."""


@dataclass
class PreparedCase:
    """A case ready to sample (padded, task-normalised condition) with what is needed to write the result."""

    case_id: str
    condition: torch.Tensor            # (1, n_cond, X', Y', Z') padded to the networks' multiples
    pads: list                         # [(before, after)] per axis of the padding
    measurement: torch.Tensor | None   # (1, 1, x', y', z') A of the measured target on the unpadded grid
    properties: dict                   # preprocessing properties (inversion)
    mask_original: np.ndarray
    target_params: dict                # the output's intensity scale {"center", "half_range"}
    output_props: dict                 # imageio props of the output grid
    keep: np.ndarray                   # bool, output grid: where the output may be non-zero
    lowres: np.ndarray | None          # float64 measurement on the original low-resolution grid
    preview_input: np.ndarray          # the primary input on the output grid (up(lr) for SR), for previews
    mask: torch.Tensor | None = None   # (1, 1, X', Y', Z') the condition's non-zero mask (the experts' mask channel)

    @property
    def shape(self) -> tuple:
        """Spatial shape that is sampled (padded)."""
        return tuple(self.condition.shape[2:])


def _output_grid(arrays: Mapping[int, np.ndarray], props: Mapping[int, dict], files: Mapping, task_plans: Mapping,
                 input_grid: str):
    """(output props, float64 low-resolution measurement or None, keep mask) of a case."""
    degradation = task_plans.get("degradation")
    if not degradation:
        first = int(task_plans["inputs"][0])
        _check_on_grid(props, files, task_plans["inputs"][1:], props[first], grid="the first input's grid",
                       other_fix="")
        keep = np.any(np.stack([arrays[int(c)] != 0 for c in task_plans["inputs"]]), axis=0)
        return copy.deepcopy(props[first]), None, keep
    target = int(task_plans["target"])
    operator = operator_for(degradation)
    if input_grid == "lr":
        lowres = np.asarray(arrays[target], dtype=np.float64)
        hr_shape = None
        if task_plans["inputs"]:
            # a high-resolution input whose last blocks are partial fixes the exact output shape
            shape = [int(n) for n in props[int(task_plans["inputs"][0])]["shape"]]
            if list(operator.lowres_shape(shape)) == list(lowres.shape):
                hr_shape = shape
        output_props = highres_grid(props[target], operator.factor, hr_shape)
    else:
        lowres = avgpool_downsample(np.asarray(arrays[target], dtype=np.float64), operator.factor)
        output_props = copy.deepcopy(props[target])
    hr_shape = [int(n) for n in output_props["shape"]]
    keep = operator.pinv(torch.from_numpy((lowres != 0).astype(np.float32)), hr_shape).numpy() > 0
    grid = (f"the low-resolution input x {list(operator.factor)}" if input_grid == "lr" else "the input grid")
    _check_on_grid(props, files, task_plans["inputs"], output_props, grid=f"{grid} (shape {hr_shape})",
                   other_fix=" or give the target input on the other grid (--input_grid lr|hr)")
    return output_props, lowres, keep


def _check_on_grid(props: Mapping[int, dict], files: Mapping, channels, grid_props: dict, *, grid: str,
                   other_fix: str) -> None:
    """CaseInputError naming the file of the first channel whose image is not on the output grid."""
    for channel in channels:
        problems = check_same_geometry(props[int(channel)], grid_props)
        if problems:
            raise CaseInputError(
                f"{files.get(int(channel), f'channel {channel}')}: input {channel} is not on the output grid, "
                f"{grid} ({'; '.join(problems)}). Fix: resample it onto that grid{other_fix}.")


def _pad(volume: torch.Tensor, multiples, values) -> tuple[torch.Tensor, list]:
    """Pad (1, C, X, Y, Z) per channel with `values` to multiples of `multiples`, split evenly before/after."""
    extras = [-n % int(m) for n, m in zip(volume.shape[2:], multiples)]
    pads = even_pads(extras)
    if not any(a or b for a, b in pads):
        return volume, pads
    channels = [pad_evenly(volume[:, c:c + 1], extras, float(v))[0] for c, v in enumerate(values)]
    return torch.cat(channels, dim=1), pads


def sampling_spacing(plans: Mapping, output_props: Mapping, task_plans: Mapping) -> tuple[list[float], bool]:
    """(spacing to sample at, whether the per-step projection may run there) for a case's output grid."""
    target = [float(s) for s in plans["target_spacing"]]
    tolerance = plans.get("inference", {}).get("sr_spacing_tolerance")
    if not task_plans.get("degradation") or tolerance is None:
        return target, True
    spacing = [float(s) for s in output_props["spacing"]]
    drift = max(abs(s - t) / t for s, t in zip(spacing, target))
    return (spacing, True) if drift <= float(tolerance) else (target, False)


def resample_like_case(volume: np.ndarray, properties: Mapping, order: int = 1) -> np.ndarray:
    """Crop a volume on the case's grid to the case's bbox and resample it as preprocessing did (linear)."""
    region = tuple(slice(lo, hi) for lo, hi in properties["bbox"])
    resampling = properties["resampling"]
    return resample_data(volume[region][None], properties["spacing_before_resampling"],
                         properties["spacing_after_resampling"], properties["shape_after_resampling"], order=order,
                         order_z=order, anisotropy_threshold=resampling["anisotropy_threshold"],
                         separate_z=resampling["separate_z_axis"])[0]


def prepare_case(arrays: Mapping[int, np.ndarray], props: Mapping[int, dict], plans: Mapping, task: str, *,
                 input_grid: str = "lr", case_id: str = "case", files: Mapping | None = None,
                 consistency: bool = True) -> PreparedCase:
    """Preprocess one case's canonical input arrays (by dataset channel) for sampling `task` (module docstring)."""
    if input_grid not in INPUT_GRIDS:
        raise ValueError(f"input_grid {input_grid!r}: use one of {INPUT_GRIDS}.")
    files = files or {}
    task_plans = plans["tasks"][task]
    target, inputs = int(task_plans["target"]), [int(c) for c in task_plans["inputs"]]
    degradation = task_plans.get("degradation")
    for channel in task_plans["condition_channels"]:
        if not np.any(arrays[int(channel)]):
            raise CaseInputError(f"{files.get(int(channel), f'{case_id} channel {channel}')}: every voxel is 0. Fix: "
                                 "check the file (an empty or fully masked scan cannot be translated).")
    output_props, lowres, keep = _output_grid(arrays, props, files, task_plans, input_grid)
    hr_shape = [int(n) for n in output_props["shape"]]
    rows, channels = [np.asarray(arrays[c], dtype=np.float32) for c in inputs], list(inputs)
    if degradation:
        operator = operator_for(degradation)
        up = upsample_to_grid(torch.from_numpy(lowres.astype(np.float32))[None, None], operator.factor, hr_shape)
        rows.append(up[0, 0].numpy())
        channels.append(target)
        # Only the input's non-zero blocks are predicted (the rest is exactly 0): cropping to them also starts the
        # crop on a block boundary, so A on the preprocessed grid pools the same blocks as A on the output grid.
        rows = [row * keep for row in rows]
    spacing, project_per_step = sampling_spacing(plans, output_props, task_plans)
    data, _mask, properties, mask_original = preprocess_arrays(np.stack(rows), output_props,
                                                               {**plans, "target_spacing": spacing}, case_id,
                                                               channels=channels)
    percentiles = plans.get("normalization", {}).get("percentiles", DEFAULT_PERCENTILES)
    entries = properties["normalization"]
    if degradation:
        key = degradation_key(degradation)
        entries[str(target)]["degraded"][key] = params_from_lowres(lowres, percentiles)
    else:
        dataset = plans["normalization"]["dataset"][str(target)]
        entries[str(target)] = {"case": dict(dataset), "degraded": {}, "dataset": dict(dataset)}
    volumes = {c: data[row] for row, c in enumerate(channels)}
    volumes.setdefault(target, np.zeros(data.shape[1:], np.float32))
    target_volume, input_volumes = task_volumes(volumes, properties, plans, task)
    target_params = task_normalization(properties, plans, task)[0][1]
    parts = [input_volumes] + ([target_volume] if degradation else [])
    condition = torch.from_numpy(np.concatenate(parts))[None]
    pad_values = condition_background(task_background(properties, plans, task), task_plans)
    condition, pads = _pad(condition, plans["crop_multiples"], pad_values)
    mask = condition_mask(condition, pad_values) if pad_values else None

    measurement = None
    if degradation and consistency and project_per_step:
        nearest = operator.pinv(torch.from_numpy(lowres), hr_shape).numpy()
        measured = normalize(resample_like_case(nearest, properties), target_params)
        measurement = operator.A(torch.from_numpy(measured)[None, None])
    preview = rows[-1] if degradation else rows[0]
    return PreparedCase(case_id, condition, pads, measurement, properties, mask_original, target_params,
                        output_props, keep, lowres, preview, mask)


def finish_case(target_pp: np.ndarray, case: PreparedCase, task_plans: Mapping, consistency: bool = True) -> np.ndarray:
    """The sampled target (unpadded, task-normalised, preprocessed grid) as a float32 image on the output grid."""
    channel = case.properties["channels"][0]
    values, _ = invert_preprocessing(target_pp, case.properties, channel, case.target_params,
                                     mask_original=case.mask_original)
    values = values.astype(np.float64) * case.keep
    degradation = task_plans.get("degradation")
    if degradation and consistency:
        operator = operator_for(degradation)
        projected = operator.project(torch.from_numpy(values)[None, None], torch.from_numpy(case.lowres)[None, None])
        values = projected[0, 0].numpy() * case.keep
    return values.astype(np.float32)


def projection_hook(task_plans: Mapping, condition: torch.Tensor, measurement: torch.Tensor, pads, refine=None):
    """The per-step x0 hook of an SR case (Sec. 3.1): x0_hat as a target, projected onto the measurement inside the
    pads (or replaced there by `refine(target)`, which must keep the measurement), and back to the diffusion space."""
    operator = operator_for(task_plans["degradation"])

    def hook(x0_hat, t):
        target = target_from_y0(x0_hat, condition, task_plans)
        if refine is not None:
            return y0_from_target(refine(target), condition, task_plans)
        region = tuple(slice(a, n - b) for (a, b), n in zip(pads, target.shape[2:]))
        projected = target.clone()
        projected[(..., *region)] = operator.project(target[(..., *region)], measurement.to(target.dtype))
        return y0_from_target(projected, condition, task_plans)
    return hook
