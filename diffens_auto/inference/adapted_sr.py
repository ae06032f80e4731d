"""SR prediction with D3IP test-time adaptation (`diffens_predict ... -t sr --adapt d3ip|d3ip_mbir|d3ip_meta|ddip`).

An average-pooled SR task's measurement is the low-resolution input, whose block means the per-step projection
keeps on the block-aligned sampling grid (case_preparation.sampling_spacing). Pooling separates along every axis,
but by whole blocks only: every expert of the model adapts its own LoRA set on K whole blocks of slices along its
axis (`adaptation.PooledSlices`); a learned ensembler stays frozen and fuses the adapted experts. The loss is the
misfit of the soft (finite-gamma) estimate, exact in closed form for pooling: the hard projection would meet the
measurement exactly and give no gradient. Sampling is the model's own (strategy, sampler, per-step projection);
slice draws come from their own generator, seeded from the sample's seed, so with the same --seed an adapted and an
unadapted prediction share every sampler draw.

- d3ip, d3ip_meta: the per-step projection in sampling, the soft estimate in the loss;
- d3ip_mbir: a contiguous slab of K blocks and slab TV-ADMM along the slice axis in the loss; in sampling, TV-ADMM
  of the whole volume along the first adapted expert's axis, then the projection (the output keeps the input);
- ddip: every block of slices (one block: the measurement's smallest unit) sampled on its own by the single expert,
  with a fresh LoRA set adapted on it (time grows with the number of blocks).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffens_auto.adaptation import AdaptationSettings, AdaptationSettingsError, AdaptingDenoiser, PooledSlices
from diffens_auto.diffusion import sample
from diffens_auto.diffusion.padding import unpad
from diffens_auto.diffusion.prediction import as_eps_denoiser
from diffens_auto.diffusion.strategies import SingleExpert, WithPositions
from diffens_auto.inference.adapted_recon import (LORA_SUFFIX, SLICE_SAMPLER, AdaptationCaseError, adaptation_seed,
                                                  initial_weights, load_lora_file, lora_record, lora_settings)
from diffens_auto.inference.case_preparation import PreparedCase, finish_case, projection_hook
from diffens_auto.inference.model import PredictionSetupError
from diffens_auto.inference.sampling_settings import AdaptationRequest
from diffens_auto.planning.task_sections import POOLED_ADAPTATION
from diffens_auto.tasks.conditioning import residual_scale, target_from_y0


class _TVRefine:
    """mbir's whole-volume data consistency of one sample: TV-ADMM then the projection, ADMM state carried."""

    def __init__(self, problem: PooledSlices, settings: AdaptationSettings):
        self.problem, self.settings, self.state = problem, settings, None

    def __call__(self, target: torch.Tensor) -> torch.Tensor:
        tv = {"rho": self.settings.tv_rho, "lam": self.settings.tv_lambda, "admm_steps": self.settings.admm_steps}
        refined, self.state = self.problem.tv_consistency(target, gamma=self.settings.dc_gamma,
                                                          cg_steps=self.settings.dc_steps, tv=tv, state=self.state)
        return refined


class AdaptedSR:
    """A predictor's SR sampling whose experts adapt to each case (module docstring)."""

    def __init__(self, predictor, request: AdaptationRequest):
        """Resolve the variant's settings from the plans and the flags, check the model can adapt, load --lora."""
        model = predictor.model
        self.predictor, self.request, self.task_plans = predictor, request, model.task_plans
        degradation = self.task_plans.get("degradation") or {}
        if degradation.get("type") != "avgpool":
            raise PredictionSetupError(f"--adapt {request.method}: task '{model.task}' has no measurement to adapt to "
                                       "(recon and average-pooled SR tasks have one). Fix: leave --adapt out.")
        self.factor = [int(f) for f in degradation["factor"]]
        # plans made before the section existed get the values the planner writes now
        section = self.task_plans.get("adaptation", POOLED_ADAPTATION)
        sampling = predictor.sampling
        gamma, steps = sampling.dc_gamma, sampling.dc_steps
        if steps is not None and request.method != "d3ip_mbir":
            raise PredictionSetupError(f"--dc_steps: --adapt {request.method} on an SR task solves its soft estimate "
                                       "exactly (no CG steps); only d3ip_mbir's TV-ADMM takes them. Fix: leave "
                                       "--dc_steps out.")
        gamma = section.get("dc_gamma", POOLED_ADAPTATION["dc_gamma"]) if gamma is None else gamma
        steps = section.get("dc_steps", POOLED_ADAPTATION["dc_steps"]) if steps is None else steps
        try:
            self.adaptation = AdaptationSettings.resolve(request.method, section, request.overrides, dc_gamma=gamma,
                                                         dc_steps=steps, task=model.task)
        except AdaptationSettingsError as e:
            raise PredictionSetupError(str(e)) from None
        runners = list(model.runners.values())
        foreign = [r.name for r in runners if not hasattr(r, "run_slices")]
        if foreign:
            raise PredictionSetupError(f"--adapt {request.method}: the experts {', '.join(foreign)} of -c "
                                       f"{model.configuration} belong to another task (a fusion ensembler); "
                                       "adapting them is not built. Fix: predict without --adapt.")
        if request.method == "ddip" and len(runners) != 1:
            raise PredictionSetupError(f"--adapt ddip samples every block of slices on its own with one expert; -c "
                                       f"{model.configuration} runs {', '.join(r.name for r in runners)}. Fix: -c "
                                       f"{runners[0].name}.")
        self.runners = runners
        self.initial = load_lora_file(Path(request.lora)) if request.lora is not None else None
        self.last_weights: dict | None = None

    def settings(self) -> dict:
        """The adaptation's settings as prediction_settings.json records them (compared by --continue_prediction)."""
        return {**self.adaptation.as_dict(), "adapted": [r.name for r in self.runners], **lora_settings(self.request)}

    def extra_outputs(self, output_folder: Path, case_id: str) -> dict:
        """CASE_lora.pth with --save_adapted."""
        return {"lora": Path(output_folder) / f"{case_id}{LORA_SUFFIX}"} if self.request.save_adapted else {}

    # ------------------------------------------------------------------ one case

    def sample_case(self, case: PreparedCase) -> list[np.ndarray]:
        """num_samples adapted targets of a prepared case on the output grid (sample i from seed + i)."""
        if case.measurement is None:
            raise AdaptationCaseError(
                f"--adapt {self.adaptation.method}: case {case.case_id} has no measurement on its sampling grid "
                "(its spacing is resampled beyond the plans' inference.sr_spacing_tolerance, or the projection is "
                "off), so there is nothing to adapt to. Fix: give the input on the planned grid, or predict it "
                "without --adapt.")
        device = self.predictor.device
        condition, measurement = case.condition.to(device), case.measurement.to(device)
        outputs, weights = [], None
        for i in range(self.predictor.sampling.num_samples):
            seed = self.predictor.sampling.seed + i
            run = self._blocks if self.adaptation.method == "ddip" else self._volume
            y0, sample_weights = run(case, condition, measurement, seed)
            target = unpad(target_from_y0(y0, condition, self.task_plans), case.pads)[0, 0]
            outputs.append(finish_case(target.float().cpu().numpy(), case, self.task_plans,
                                       self.predictor.consistency))
            weights = weights or sample_weights
        self.last_weights = lora_record(self.adaptation, weights)
        return outputs

    def _problem(self, condition, measurement, pads, axis: int, factor=None) -> PooledSlices:
        residual = self.task_plans["parametrization"] == "epsilon_residual"
        return PooledSlices(factor or self.factor, measurement, pads, axis,
                            offset=condition[:, -1:] if residual else None,
                            scale=residual_scale(self.task_plans) if residual else 1.0)

    def _adapter(self, denoiser, runners, problems, frame) -> AdaptingDenoiser:
        predictor = self.predictor
        return AdaptingDenoiser(denoiser, runners, problems, self.adaptation, schedule=predictor.sampler.schedule,
                                timesteps=predictor.sampler.timesteps.tolist(),
                                prediction=self.task_plans.get("prediction", "epsilon"), frame=frame,
                                initial=initial_weights(self.initial, runners, self.request.lora))

    def _volume(self, case: PreparedCase, condition, measurement, seed: int):
        """One adapted sample of the whole volume (y0, padded) and the LoRA weights it ended with."""
        predictor = self.predictor
        denoiser = predictor.case_denoiser(case.shape, case.pads, case.target_params, case.mask)
        problems = {int(r.slice_axis): self._problem(condition, measurement, case.pads, int(r.slice_axis))
                    for r in self.runners}
        adapter = self._adapter(denoiser, self.runners, problems,
                                predictor.case_frame(case.shape, case.pads, case.mask))
        refine = (_TVRefine(problems[int(self.runners[0].slice_axis)], self.adaptation)
                  if self.adaptation.method == "d3ip_mbir" else None)
        hook = projection_hook(self.task_plans, condition, measurement, case.pads, refine=refine)
        adapter.begin(adaptation_seed(seed))
        try:
            y0 = sample(adapter, predictor.sampler, (1, 1, *case.shape), condition, seed=seed, x0_hook=hook,
                        progress=predictor.progress, device=predictor.device)
        finally:
            weights = adapter.end()
        return y0, weights

    def _blocks(self, case: PreparedCase, condition, measurement, seed: int):
        """DDIP: every block of slices along the expert's axis sampled alone with a fresh LoRA set; y0 (padded,
        0 outside the measured slices) and the last block's LoRA weights."""
        predictor, runner = self.predictor, self.runners[0]
        axis, dim = int(runner.slice_axis), 2 + int(runner.slice_axis)
        block, (before, after) = self.factor[axis], case.pads[axis]
        frame = predictor.case_frame(case.shape, case.pads, case.mask)
        strategy = SingleExpert(runner)
        schedule, prediction = predictor.sampler.schedule, self.task_plans.get("prediction", "epsilon")
        y0 = torch.zeros((1, 1, *case.shape), dtype=torch.float32, device=predictor.device)
        sub_pads = [pad if a != axis else (0, 0) for a, pad in enumerate(case.pads)]
        weights = {}
        for k, first in enumerate(range(before, case.shape[axis] - after, block)):
            index = torch.arange(first, min(first + block, case.shape[axis] - after), device=predictor.device)
            sub_condition = condition.index_select(dim, index)
            sub_frame = None if frame is None else frame.index_select(dim, index)
            sub_measurement = measurement.narrow(dim, k, 1)
            # a partial last block is its own, smaller block (its mean is over its real slices)
            factor = [f if a != axis else len(index) for a, f in enumerate(self.factor)]
            problem = self._problem(sub_condition, sub_measurement, sub_pads, axis, factor)
            denoiser = as_eps_denoiser(strategy if sub_frame is None else WithPositions(strategy, sub_frame),
                                       schedule, prediction)
            adapter = self._adapter(denoiser, [runner], problem, sub_frame)
            hook = projection_hook(self.task_plans, sub_condition, sub_measurement, sub_pads)
            adapter.begin(adaptation_seed(seed, k + 1))
            try:
                slab = sample(adapter, predictor.sampler, tuple(sub_condition[:, :1].shape), sub_condition,
                              seed=adaptation_seed(seed, k + 1, SLICE_SAMPLER), x0_hook=hook, progress=False,
                              device=predictor.device)
            finally:
                weights = adapter.end()
            y0.index_copy_(dim, index, slab.to(y0.dtype))
        return y0, weights
