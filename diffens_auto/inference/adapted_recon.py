"""Recon prediction with D3IP test-time adaptation (`diffens_predict ... --adapt d3ip|d3ip_mbir|d3ip_meta|ddip`).

`AdaptedReconstruction` is DDS (`recon_prediction.DDSReconstruction`: the same sampler, steps, gamma, CG steps,
start and sampler seeds) whose prior adapts to the case (`adaptation.AdaptingDenoiser`): the experts whose slice
axis is the one the bundle's mask separates along adapt one shared LoRA set each, the other experts (and a learned
ensembler) run as trained; a configuration with no such expert is refused for the case with a message. Slice draws
come from their own generator, seeded from the sample's seed, so DDS and D3IP share every sampler draw.

- d3ip, d3ip_meta: CG data consistency in sampling and in the loss;
- d3ip_mbir: TV-ADMM along the slice axis in both (the whole volume in sampling, a K-slice slab in the loss);
- ddip: the per-slice baseline: every slice is sampled on its own by the separable expert alone, with a fresh LoRA
  set adapted on that slice (time grows with the number of slices).

`--save_adapted` writes CASE_lora.pth beside the output (the first sample's LoRA weights per adapted expert, a
plain dict of tensors: torch.load(weights_only=True) reads it); `--lora FILE` starts every sample from such weights.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from diffens_auto.adaptation import (AdaptationSettings, AdaptationSettingsError, AdaptingDenoiser, KSpaceSlices,
                                     separable_runners)
from diffens_auto.atomic import atomic_path
from diffens_auto.diffusion.prediction import as_eps_denoiser
from diffens_auto.diffusion.strategies import SingleExpert, WithPositions
from diffens_auto.inference.model import PredictionSetupError
from diffens_auto.inference.recon_prediction import DDSReconstruction, ReconCase, dds_reconstruct, recon_pads
from diffens_auto.inference.sampling_settings import AdaptationRequest
from diffens_auto.operators import FileOrderKSpace
from diffens_auto.planning.task_sections import KSPACE_ADAPTATION

LORA_SUFFIX = "_lora.pth"
LORA_FORMAT = "diffens_lora"


class AdaptationCaseError(PredictionSetupError):
    """A case that the chosen adaptation cannot run on (no expert slices along its separable axis)."""


SLICE_DRAWS, SLICE_SAMPLER = 0, 1     # the two streams derived from a sample's seed


def adaptation_seed(seed: int, index: int = 0, stream: int = SLICE_DRAWS) -> int:
    """A seed derived from the sample's sampler seed: its slice draws, or (ddip) slice `index`'s own streams."""
    return int(np.random.SeedSequence([int(seed), int(index), int(stream), 0xD31F]).generate_state(1)[0])


def load_lora_file(path: Path) -> dict:
    """{expert name: LoRA state_dict} of a CASE_lora.pth, loaded with weights_only; a foreign file is refused."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise PredictionSetupError(f"--lora {path}: not a readable LoRA file ({type(e).__name__}: {e}). Fix: give a "
                                   "CASE_lora.pth written by --save_adapted.") from None
    if not isinstance(record, dict) or record.get("format") != LORA_FORMAT:
        raise PredictionSetupError(f"--lora {path}: not a diffens_auto LoRA file (no format '{LORA_FORMAT}'). Fix: "
                                   "give a CASE_lora.pth written by --save_adapted.")
    return record


def initial_weights(initial: dict | None, adapted, path) -> dict | None:
    """{runner name: LoRA state_dict} of a --lora file for the adapted runners; a file of other experts is refused."""
    if initial is None:
        return None
    missing = [r.name for r in adapted if r.name not in initial]
    if missing:
        raise PredictionSetupError(f"--lora {path} holds weights for "
                                   f"{[k for k in initial if isinstance(initial[k], dict)]}, not for "
                                   f"{missing}. Fix: give a file saved with the same model.")
    return {r.name: initial[r.name] for r in adapted}


def lora_settings(request: AdaptationRequest) -> dict:
    """The --lora file (path, SHA-256) and --save_adapted as prediction_settings.json records them."""
    lora = None if request.lora is None else {
        "path": str(request.lora), "sha256": hashlib.sha256(Path(request.lora).read_bytes()).hexdigest()}
    return {"lora": lora, "save_adapted": request.save_adapted}


def lora_record(settings: AdaptationSettings, weights: dict) -> dict:
    """What CASE_lora.pth holds: the format, the variant, the LoRA rank and scale and the weights per expert."""
    return {"format": LORA_FORMAT, "version": 1, "method": settings.method, "lora_rank": settings.lora_rank,
            "lora_scale": settings.lora_scale, **weights}


class _TVConsistency:
    """mbir's data consistency of the whole volume as the sampler's x0 hook sees it; ADMM state per sample."""

    def __init__(self, problem: KSpaceSlices, settings: AdaptationSettings):
        self.problem, self.settings, self.state = problem, settings, None

    def cg_data_consistency(self, x0_hat, y, gamma, num_steps):
        """TV-ADMM of x0_hat on the bundle's grid (the padding untouched), warm-started from the last step."""
        tv = {"rho": self.settings.tv_rho, "lam": self.settings.tv_lambda, "admm_steps": self.settings.admm_steps}
        refined, self.state = self.problem.tv_consistency(x0_hat, gamma=gamma, cg_steps=num_steps, tv=tv,
                                                          state=self.state)
        return refined


class AdaptedReconstruction(DDSReconstruction):
    """DDS with a predictor's recon model, adapted to each case (module docstring)."""

    def __init__(self, predictor, request: AdaptationRequest):
        """Resolve the variant's settings from the plans and the flags; load --lora weights."""
        super().__init__(predictor)
        model = predictor.model
        try:
            # plans made before the section existed get the values the planner writes now, as for `dds`
            section = model.task_plans.get("adaptation", KSPACE_ADAPTATION)
            self.adaptation = AdaptationSettings.resolve(request.method, section,
                                                         request.overrides, dc_gamma=self.gamma,
                                                         dc_steps=self.cg_steps, task=model.task)
        except AdaptationSettingsError as e:
            raise PredictionSetupError(str(e)) from None
        self.request = request
        self.initial = load_lora_file(Path(request.lora)) if request.lora is not None else None
        self.last_weights: dict | None = None

    def settings(self) -> dict:
        """DDS's settings with the adaptation's (compared by --continue_prediction)."""
        return {**super().settings(), "adaptation": {**self.adaptation.as_dict(), **lora_settings(self.request)}}

    def extra_outputs(self, output_folder: Path, case_id: str) -> dict:
        """CASE_lora.pth with --save_adapted."""
        return {"lora": Path(output_folder) / f"{case_id}{LORA_SUFFIX}"} if self.request.save_adapted else {}

    def write_extra_outputs(self, outputs: dict) -> None:
        """Write the last case's LoRA weights (atomic) when asked to."""
        if "lora" in outputs and self.last_weights is not None:
            with atomic_path(outputs["lora"]) as tmp:
                torch.save(self.last_weights, tmp)

    def adapted_runners(self, case: ReconCase) -> list:
        """The model's runners that adapt on this case (those slicing along its separable axis); refuses none."""
        runners = list(self.predictor.model.runners.values())
        adapted = separable_runners(runners, case.slice_axis)
        if not adapted:
            planes = {0: "sagittal", 1: "coronal", 2: "axial"}
            raise AdaptationCaseError(
                f"--adapt {self.adaptation.method}: the mask of case {case.case_id} separates along canonical axis "
                f"{case.slice_axis} ({planes[case.slice_axis]} slices), and no expert of this model slices that way "
                f"({', '.join(r.name for r in runners)}). Fix: predict with the 2d_{planes[case.slice_axis]} expert "
                "(or a strategy that includes it), or without --adapt.")
        if self.adaptation.method == "ddip" and len(adapted) != len(runners):
            raise AdaptationCaseError(f"--adapt ddip samples every slice on its own with the expert of that plane "
                                      f"alone; -c {self.predictor.model.configuration} also runs "
                                      f"{', '.join(r.name for r in runners if r not in adapted)}. Fix: -c "
                                      f"{adapted[0].name}.")
        return adapted

    def reconstruct(self, case: ReconCase) -> list[np.ndarray]:
        """num_samples adapted samples of the case (sample i from seed + i, its slice draws from their own seed)."""
        adapted = self.adapted_runners(case)
        unadapted = [r.name for r in self.predictor.model.runners.values() if r not in adapted]
        if unadapted:
            case.notes.append(f"adapted {', '.join(r.name for r in adapted)}; {', '.join(unadapted)} ran unadapted "
                              f"(the mask separates along axis {case.slice_axis} only)")
        outputs, weights = [], None
        for i in range(self.num_samples):
            seed = self.predictor.sampling.seed + i
            run = self.ddip_slices if self.adaptation.method == "ddip" else self._volume
            image, sample_weights = run(case, adapted, seed)
            outputs.append(image)
            weights = weights or sample_weights
        self.last_weights = lora_record(self.adaptation, weights)
        return outputs

    def _initial(self, adapted) -> dict | None:
        return initial_weights(self.initial, adapted, self.request.lora)

    def _volume(self, case: ReconCase, adapted, seed: int) -> tuple[np.ndarray, dict]:
        """One D3IP sample of the whole volume and the LoRA weights it ended with."""
        predictor, device = self.predictor, self.predictor.device
        pads = recon_pads(case.shape, self.plans["crop_multiples"])
        padded = [n + a + b for n, (a, b) in zip(case.shape, pads)]
        denoiser = predictor.case_denoiser(padded, pads, case.params)
        operator = FileOrderKSpace(case.operator.reorientation, case.operator.mask.to(device),
                                   case.operator.fft_axes)
        problem = KSpaceSlices(operator, case.measurement.to(device), pads, case.slice_axis)
        adapter = AdaptingDenoiser(denoiser, adapted, problem, self.adaptation, schedule=predictor.sampler.schedule,
                                   timesteps=predictor.sampler.timesteps.tolist(),
                                   prediction=self.predictor.model.task_plans.get("prediction", "epsilon"),
                                   frame=predictor.case_frame(padded, pads), initial=self._initial(adapted))
        consistency = _TVConsistency(problem, self.adaptation) if self.adaptation.method == "d3ip_mbir" else None
        adapter.begin(adaptation_seed(seed))
        try:
            image = dds_reconstruct(case, adapter, predictor.sampler, pads, gamma=self.gamma, cg_steps=self.cg_steps,
                                    seed=seed, device=device, progress=predictor.progress, consistency=consistency)
        finally:
            weights = adapter.end()
        return image, weights

    def ddip_slices(self, case: ReconCase, adapted, seed: int, slices=None) -> tuple[np.ndarray, dict]:
        """DDIP: every slice (or those of `slices`, the others left 0) sampled alone with a fresh LoRA set; the
        image and the last slice's LoRA weights."""
        predictor, device = self.predictor, self.predictor.device
        runner, axis = adapted[0], case.slice_axis
        multiples = list(self.plans["crop_multiples"])
        multiples[axis] = 1           # one slice of a 2D expert needs no padding along its slice axis
        pads = recon_pads(case.shape, multiples)
        padded = [n + a + b for n, (a, b) in zip(case.shape, pads)]
        frame = predictor.case_frame(padded, pads)
        schedule, prediction = predictor.sampler.schedule, predictor.model.task_plans.get("prediction", "epsilon")
        strategy = SingleExpert(runner)
        out = np.zeros(case.shape, dtype=np.float32)
        weights = {}
        for s in range(case.shape[axis]) if slices is None else slices:
            index = torch.tensor([s])
            operator, y = case.operator.slab(axis, index, case.measurement)
            sub = ReconCase(case.case_id, operator, y, case.zero_filled.index_select(2 + axis, index), case.params,
                            case.props, axis)
            sub_frame = None if frame is None else frame.index_select(2 + axis, index.to(frame.device))
            sub_pads = [p if a != axis else (0, 0) for a, p in enumerate(pads)]
            denoiser = as_eps_denoiser(strategy if sub_frame is None else WithPositions(strategy, sub_frame),
                                       schedule, prediction)
            device_operator = FileOrderKSpace(operator.reorientation, operator.mask.to(device), operator.fft_axes,
                                              normalisation="none")
            problem = KSpaceSlices(device_operator, y.to(device), sub_pads, axis)
            adapter = AdaptingDenoiser(denoiser, [runner], problem, self.adaptation, schedule=schedule,
                                       timesteps=predictor.sampler.timesteps.tolist(), prediction=prediction,
                                       frame=sub_frame,
                                       initial=self._initial(adapted))
            adapter.begin(adaptation_seed(seed, s + 1))
            try:
                image = dds_reconstruct(sub, adapter, predictor.sampler, sub_pads, gamma=self.gamma,
                                        cg_steps=self.cg_steps, seed=adaptation_seed(seed, s + 1, SLICE_SAMPLER),
                                        device=device,
                                        progress=False)
            finally:
                weights = adapter.end()
            np.copyto(out[(slice(None),) * axis + (slice(s, s + 1),)], image)
        return out, weights
