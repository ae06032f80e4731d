"""The per-timestep diagnostic of validation: x0-PSNR and eps-MSE per bucket of t, for each strategy of a model.

For every validation case (its preprocessed volumes, placed in the crop as the validation batches are), each
strategy the trained model can run - the configuration itself and, for an ensembler, each of its experts alone,
TPDM and their average - denoises y_t at the middle timestep of NUM_BUCKETS buckets of t, all from the same noise;
`diffusion/diagnostic.py` gives the errors. The trivial predictor x0 = 0 (for an SR residual: the interpolated
input, the floor) is the reference curve. Means over the cases go to validation/timestep_diagnostic.json and .png
(documentation/training.md shows how to read them).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
from matplotlib.figure import Figure

from diffens_auto.atomic import atomic_path, atomic_write_json
from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.diagnostic import bucket_timesteps, timestep_errors
from diffens_auto.diffusion.prediction import as_eps_denoiser
from diffens_auto.diffusion.slicing import expert_frame, needs_frame, position_channels
from diffens_auto.diffusion.strategies import WithPositions, build_strategy
from diffens_auto.diffusion.target_space import set_case_params
from diffens_auto.inference.model import TrainedModel
from diffens_auto.preprocessing.storage import load_case
from diffens_auto.tasks.conditioning import (condition_background, condition_mask, make_condition, target_from_y0,
                                             task_background, task_normalization, task_volumes)
from diffens_auto.tasks.placement import block_step, draw_placement, place_in_crop

NUM_BUCKETS = 10
TRIVIAL = "trivial (x0 = 0)"


def diagnosed_strategies(model: TrainedModel) -> dict:
    """The configuration's own strategy and, for an ensembler of several experts, each expert, TPDM and average."""
    strategies = {model.configuration: model.strategy}
    if model.ensembler is not None and len(model.runners) > 1:
        for name, runner in model.runners.items():
            strategies[name] = build_strategy(name, {name: runner})
        strategies["tpdm"] = build_strategy("tpdm", model.runners)
        strategies["average"] = build_strategy("average", model.runners)
    return strategies


def case_sample(data_folder: Path, case_id: str, plans: dict, task: str):
    """(y0, condition, region, target params, expert frame) of a preprocessed case centred in the crop, as the
    validation batches make them; target params = [[center, half_range]] of the target in the task's
    normalisation; the frame = the crop's coordinates and the condition's non-zero mask (slicing.expert_frame)."""
    data, _, properties = load_case(data_folder, case_id)
    target, inputs = task_volumes(data, properties, plans, task)
    stacked = np.concatenate([target, inputs])
    crop = plans["crop_size"]
    task_plans = plans["tasks"][task]
    offset = draw_placement(stacked.shape[1:], crop, block_step(task_plans), np.random.default_rng(0), centred=True)
    background = task_background(properties, plans, task)
    placed = torch.from_numpy(place_in_crop(stacked, crop, offset, background))[None]
    condition, y0 = make_condition(placed[:, :1], placed[:, 1:], task_plans)
    region = (slice(None), slice(None)) + tuple(slice(max(o, 0), min(o + n, c))
                                                for o, n, c in zip(offset, stacked.shape[1:], crop))
    params = task_normalization(properties, plans, task)[0][1]
    mask = condition_mask(condition, condition_background(background, task_plans)) if condition.shape[1] else None
    frame = expert_frame(position_channels(condition.shape[2:]), mask)
    return y0, condition, region, [[params["center"], params["half_range"]]], frame


def _in_frame(strategy, frame: torch.Tensor):
    """The strategy run in the case's expert frame when any of its experts takes position or mask channels."""
    return WithPositions(strategy, frame) if any(map(needs_frame, getattr(strategy, "runners", []))) else strategy


def _psnr(mse: float, data_range: float) -> float | None:
    return 10 * math.log10(data_range ** 2 / mse) if mse > 0 and data_range > 0 else None


def timestep_diagnostic(model: TrainedModel, data_folder: Path, cases: list[str], *, seed: int = 0,
                        device="cpu") -> dict:
    """Mean x0-PSNR (target space, dB) and eps-MSE per timestep bucket over `cases`, per strategy and trivial."""
    schedule = NoiseSchedule.from_plans(model.plans["diffusion"])
    timesteps = bucket_timesteps(schedule.num_train_steps, NUM_BUCKETS)
    prediction = model.task_plans.get("prediction", "epsilon")
    diagnosed = diagnosed_strategies(model)
    sums = {name: {"x0_psnr": [], "eps_mse": []} for name in [*diagnosed, TRIVIAL]}
    for index, case in enumerate(sorted(cases)):
        y0, condition, region, target_params, frame = case_sample(data_folder, case, model.plans, model.task)
        set_case_params(model.runners.values(), target_params)
        y0, condition, frame = y0.to(device), condition.to(device), frame.to(device)
        strategies = {name: as_eps_denoiser(_in_frame(strategy, frame), schedule, prediction)
                      for name, strategy in diagnosed.items()}
        noise = torch.randn(y0.shape, generator=torch.Generator().manual_seed(seed + index)).to(device)

        def to_target(volume):
            return target_from_y0(volume, condition, model.task_plans)
        truth = to_target(y0)[region]
        data_range = float(truth.max() - truth.min())
        errors = {name: timestep_errors(strategy, schedule, y0, condition, timesteps=timesteps, noise=noise,
                                        to_target=to_target, region=region) for name, strategy in strategies.items()}
        # the trivial predictor's errors depend only on the sample: any strategy's copy of them is the same
        errors[TRIVIAL] = {"x0_mse": errors[model.configuration]["trivial_x0_mse"],
                           "eps_mse": errors[model.configuration]["trivial_eps_mse"]}
        for name, rows in errors.items():
            sums[name]["x0_psnr"].append([_psnr(m, data_range) for m in rows["x0_mse"]])
            sums[name]["eps_mse"].append(rows["eps_mse"])
    curves = {name: {key: [_mean(column) for column in zip(*values)] for key, values in entry.items()}
              for name, entry in sums.items()}
    return {"configuration": model.configuration, "task": model.task, "cases": sorted(cases),
            "num_train_steps": schedule.num_train_steps, "timesteps": timesteps,
            "bucket_edges": [round(e) for e in np.linspace(0, schedule.num_train_steps, NUM_BUCKETS + 1)],
            "curves": curves, "seed": seed,
            "definitions": {
                "x0_psnr": "PSNR of the denoiser's x0 estimate (Tweedie) against the true target on the preprocessed "
                           "grid, in the task's normalised intensities, R = the case's target max - min (dB); mean "
                           "over cases; null where the estimate is exact",
                "eps_mse": "mean (eps_hat - eps)^2 over the case's voxels; mean over cases",
                TRIVIAL: "the predictor x0 = 0 (an SR residual: the upsampled degraded input), eps_hat = "
                         "y_t / sqrt(1 - alpha_bar_t)"}}


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def write_timestep_diagnostic(diagnostic: dict, folder: Path) -> tuple[Path, Path]:
    """timestep_diagnostic.json and .png (x0-PSNR and eps-MSE against t, one line per strategy) in `folder`."""
    json_path, png_path = folder / "timestep_diagnostic.json", folder / "timestep_diagnostic.png"
    atomic_write_json(diagnostic, json_path)
    figure = Figure(figsize=(9, 7), tight_layout=True)
    FigureCanvasAgg(figure)
    psnr_axis, eps_axis = figure.subplots(2, 1, sharex=True)
    for name, curve in diagnostic["curves"].items():
        style = "k--" if name == TRIVIAL else "-o"
        x0 = [np.nan if v is None else v for v in curve["x0_psnr"]]
        psnr_axis.plot(diagnostic["timesteps"], x0, style, markersize=3, label=name)
        eps_axis.plot(diagnostic["timesteps"], curve["eps_mse"], style, markersize=3, label=name)
    psnr_axis.set_ylabel("x0 estimate PSNR [dB]")
    psnr_axis.legend(loc="upper right", fontsize=8)
    eps_axis.set_yscale("log")
    eps_axis.set_ylabel("MSE(eps_hat, eps)")
    eps_axis.set_xlabel(f"timestep t (bucket middles of {diagnostic['num_train_steps']})")
    psnr_axis.set_title(f"{diagnostic['task']} / {diagnostic['configuration']}: errors along t on "
                        f"{len(diagnostic['cases'])} validation case(s)")
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    return json_path, png_path
