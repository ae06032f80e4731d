"""DiffensPredictor: sample a trained model on new scans (one volume in memory, or a whole folder).

    predictor = DiffensPredictor(steps=50, seed=0, device="cuda")
    predictor.initialize_from_trained_model(501, "sr", "3d_ensembler", fold=0)
    predictor.predict_from_files("in", "out")                 # what diffens_predict does
    mean, std, props, case = predictor.predict_volume({3: lowres}, {3: lowres_props})

Each sample starts from its own seed (seed, seed + 1, ...), so the first of N samples equals a 1-sample run (the
noise is drawn on the CPU, so it is the same on every device; the outputs agree up to floating-point rounding).
The x0 estimate of every step is clipped (plans' clip_x0) and, for a task with a degradation sampled on a grid
whose blocks are the input's (case_preparation.sampling_spacing), projected onto the measurement there; the
finished image gets the exact projection on the output grid (case_preparation.py).
"""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

import diffens_auto
from diffens_auto.atomic import atomic_path, atomic_write_json
from diffens_auto.devices import check_device
from diffens_auto.diffusion import sample, sampler_from_plans
from diffens_auto.diffusion.padding import unpad
from diffens_auto.diffusion.prediction import as_eps_denoiser
from diffens_auto.diffusion.slicing import expert_frame, needs_frame
from diffens_auto.diffusion.strategies import WithPositions
from diffens_auto.diffusion.target_space import set_case_params
from diffens_auto.imageio import ImageReadError, count_nonfinite_voxels, read_image, write_image
from diffens_auto.inference.case_preparation import PreparedCase, finish_case, prepare_case, projection_hook
from diffens_auto.inference.input_cases import InputCase, find_input_cases, split_into_parts
from diffens_auto.inference.model import PredictionSetupError, TrainedModel, load_trained_model, prediction_request
from diffens_auto.inference.previews import write_preview
from diffens_auto.inference.sampling_settings import AdaptationRequest, SamplingSettings
from diffens_auto.inference.summary import PredictionSummary
from diffens_auto.model_folder.checkpoints import FINAL
from diffens_auto.model_folder.location import ModelLocation
from diffens_auto.planning.task_sections import is_kspace
from diffens_auto.tasks.conditioning import diffusion_for_task, target_from_y0
from diffens_auto.tasks.placement import block_step, case_positions

# what must match for --continue_prediction to keep earlier outputs (the rest may change between runs)
RESUME_KEYS = ("dataset", "task", "configuration", "fold", "plans_name", "plans_sha256", "checkpoints", "sampler",
               "steps", "seed", "num_samples", "consistency", "input_grid", "adaptation")


def check_same_settings(settings_file: Path, settings: dict, *, keys=RESUME_KEYS) -> None:
    """Refuse to continue a run whose earlier outputs were made with another model or sampling setting."""
    if not settings_file.is_file():
        return
    earlier = json.loads(settings_file.read_text(encoding="utf-8"))
    changed = [k for k in keys if json.loads(json.dumps(earlier.get(k))) != json.loads(json.dumps(settings[k]))]
    if changed:
        details = "; ".join(f"{k}: {earlier.get(k)!r} then, {settings[k]!r} now" for k in changed
                            if k != "checkpoints") + ("; checkpoints differ" if "checkpoints" in changed else "")
        raise PredictionSetupError(
            f"--continue_prediction: the outputs in {settings_file.parent} were made with other settings ({details}). "
            "Fix: continue with the same settings, write to another -o, or leave out --continue_prediction to "
            "predict every case again.")


def remove_stale_temporary_files(folder: Path) -> list[Path]:
    """Delete the hidden temporary files a killed run left (atomic writes in progress: .NAME.XXXX.tmp...)."""
    stale = [p for p in folder.glob(".*.tmp*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class DiffensPredictor:
    """Sampling settings plus a loaded model; predicts volumes, case files and folders."""

    def __init__(self, *, steps: int | None = None, sampler: str | None = None, eta: float | None = None,
                 seed: int = 0, num_samples: int = 1, consistency: bool | None = None, input_grid: str = "lr",
                 device="cpu", slice_batch_size: int | None = None, progress: bool = True, previews: bool = False,
                 dc_gamma: float | None = None, dc_steps: int | None = None, start_timestep: int | None = None,
                 adaptation: AdaptationRequest | None = None):
        """Store the settings (None: the plans' value); call initialize_from_trained_model next."""
        self.sampling = SamplingSettings(steps=steps, sampler=sampler, eta=eta, seed=int(seed),
                                         num_samples=int(num_samples),
                                         consistency=consistency, input_grid=input_grid,
                                         slice_batch_size=slice_batch_size, dc_gamma=dc_gamma, dc_steps=dc_steps,
                                         start_timestep=start_timestep)
        self.consistency = True if consistency is None else bool(consistency)   # the plans' once a model is loaded
        self.device = check_device(device, PredictionSetupError)
        self.progress, self.previews = progress, previews
        self.adaptation = adaptation or AdaptationRequest()
        self.model: TrainedModel | None = None
        self.sampler = None
        self.adapted = None       # an SR model's adaptation (inference/adapted_sr.py), with --adapt

    # ------------------------------------------------------------------ model

    def initialize_from_trained_model(self, dataset, task: str, configuration: str | None = None, fold=0,
                                      plans_name: str | None = None, *, checkpoint: str = FINAL,
                                      experts: list[str] | None = None) -> "DiffensPredictor":
        """Load a trained model from diffens_results (see inference/model.py for what -c may name)."""
        model = load_trained_model(dataset, task, configuration, fold, plans_name, checkpoint=checkpoint,
                                   device=self.device, experts=experts, slice_batch_size=self.sampling.slice_batch_size)
        return self.use_model(model)

    def initialize_from_trained_model_folder(self, model_folder, fold=0, checkpoint: str = FINAL,
                                             experts: list[str] | None = None) -> "DiffensPredictor":
        """Load the model of a DatasetXXX/TASK/CONFIG__PLANS folder anywhere on disk (e.g. an unpacked zip)."""
        with prediction_request():
            location = ModelLocation.parse(model_folder, fold)
        model = load_trained_model(None, location.task, location.configuration, location.fold,
                                   location.plans_name, checkpoint=checkpoint, device=self.device, experts=experts,
                                   slice_batch_size=self.sampling.slice_batch_size,
                                   dataset_results=location.dataset_results)
        return self.use_model(model)

    def use_model(self, model: TrainedModel) -> "DiffensPredictor":
        """Use an already loaded model (validation after training loads its own)."""
        self.adapted = None
        if is_kspace(model.task_plans.get("degradation")):
            from diffens_auto.inference.recon_prediction import recon_sampler
            self.model, self.sampler = model, recon_sampler(model.plans, model.task, self.sampling)
            return self
        if (self.sampling.dc_gamma is not None or self.sampling.dc_steps is not None) and not self.adaptation.active:
            raise PredictionSetupError(f"--dc_gamma / --dc_steps: task '{model.task}' has no k-space data "
                                       "consistency (recon tasks do; SR tasks only for --adapt's estimate). Fix: "
                                       "leave them out.")
        diffusion = diffusion_for_task(model.plans, model.task)
        if self.sampling.sampler is not None:
            diffusion["sampler"] = self.sampling.sampler
        if self.sampling.eta is not None:
            diffusion["eta"] = float(self.sampling.eta)
        if self.sampling.start_timestep is not None:
            diffusion["start_timestep"] = int(self.sampling.start_timestep)
        self.model = model
        try:
            self.sampler = sampler_from_plans(diffusion, num_steps=self.sampling.steps)
        except ValueError as e:
            raise PredictionSetupError(f"The sampling settings of task '{model.task}' cannot sample: {e}. Fix: "
                                       "correct --start_timestep / --steps (or the plans' diffusion section).") from None
        if self.sampling.consistency is None:
            self.consistency = bool(diffusion.get("consistency_projection", True))
        if self.adaptation.active:
            from diffens_auto.inference.adapted_sr import AdaptedSR
            self.adapted = AdaptedSR(self, self.adaptation)
        return self

    def _require_model(self) -> TrainedModel:
        if self.model is None:
            raise PredictionSetupError("No model loaded: call initialize_from_trained_model first.")
        return self.model

    def settings(self) -> dict:
        """The sampling settings and the model's identity, as saved beside the outputs."""
        model = self._require_model()
        plans_bytes = json.dumps(model.plans, sort_keys=True).encode()
        return {
            "package_version": diffens_auto.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "dataset": model.dataset_name, "task": model.task, "configuration": model.configuration,
            "fold": model.fold, "plans_name": model.plans_name,
            "plans_sha256": hashlib.sha256(plans_bytes).hexdigest(),
            "checkpoints": model.checkpoints,
            "sampler": repr(self.sampler), "steps": len(self.sampler.timesteps), "seed": self.sampling.seed,
            "num_samples": self.sampling.num_samples, "consistency": self.consistency,
            "input_grid": self.sampling.input_grid,
            "adaptation": None if self.adapted is None else self.adapted.settings(),
            "device": str(self.device),
        }

    # ------------------------------------------------------------------ one volume

    def _x0_hook(self, case: PreparedCase):
        """Per-step consistency projection of x0_hat onto the measurement (Sec. 3.1), on the preprocessed grid."""
        if case.measurement is None:
            return None
        return projection_hook(self._require_model().task_plans, case.condition.to(self.device),
                               case.measurement.to(self.device), case.pads)

    def case_denoiser(self, shape, pads, target_params: Mapping, mask: torch.Tensor | None = None):
        """The model's strategy as the eps-denoiser of a case padded by `pads` to `shape`, in its target scale;
        `mask` (1, 1, *shape) is the condition's non-zero mask, for experts planned with a mask channel."""
        model = self._require_model()
        # experts of another task's space (a fusion ensembler) need the case's target normalisation
        set_case_params(model.runners.values(), [[target_params["center"], target_params["half_range"]]])
        strategy = model.strategy
        frame = self.case_frame(shape, pads, mask)
        if frame is not None:
            strategy = WithPositions(strategy, frame)
        return as_eps_denoiser(strategy, self.sampler.schedule, model.task_plans.get("prediction", "epsilon"))

    def case_frame(self, shape, pads, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The experts' frame of a case padded by `pads` to `shape` (None when no expert takes one)."""
        model = self._require_model()
        runners = list(getattr(model.strategy, "runners", []))
        if not any(needs_frame(runner) for runner in runners):
            return None
        # the coordinates of training's frame (the crop, the case centred in it), not of the padded case
        unpadded = [n - a - b for n, (a, b) in zip(shape, pads)]
        positions = case_positions(unpadded, pads, model.plans["crop_size"], block_step(model.task_plans),
                                   device=self.device)
        wants_mask = any(getattr(runner, "mask_channels", 0) for runner in runners)
        return expert_frame(positions, mask.to(self.device) if wants_mask and mask is not None else None)

    def sample_case(self, case: PreparedCase) -> list[np.ndarray]:
        """num_samples targets of a prepared case, each a float32 image on the output grid."""
        task_plans = self._require_model().task_plans
        if self.adapted is not None:
            return self.adapted.sample_case(case)
        condition = case.condition.to(self.device)
        hook = self._x0_hook(case)
        outputs = []
        denoiser = self.case_denoiser(case.shape, case.pads, case.target_params, case.mask)
        for i in range(self.sampling.num_samples):
            y0 = sample(denoiser, self.sampler, (1, 1, *case.shape), condition, seed=self.sampling.seed + i,
                        x0_hook=hook, progress=self.progress, device=self.device)
            target = unpad(target_from_y0(y0, condition, task_plans), case.pads)[0, 0]
            outputs.append(finish_case(target.float().cpu().numpy(), case, task_plans, self.consistency))
        return outputs

    def predict_volume(self, arrays: Mapping[int, np.ndarray], props: Mapping[int, dict], case_id: str = "case",
                       files: Mapping | None = None):
        """(mean, std or None, output props, PreparedCase) for canonical input arrays by dataset channel."""
        model = self._require_model()
        case = prepare_case(arrays, props, model.plans, model.task, input_grid=self.sampling.input_grid,
                            case_id=case_id, files=files, consistency=self.consistency)
        samples = self.sample_case(case)
        stacked = np.stack(samples)
        mean = stacked.mean(axis=0).astype(np.float32)
        std = stacked.std(axis=0).astype(np.float32) if len(samples) > 1 else None
        return mean, std, case.output_props, case

    def read_case_inputs(self, case: InputCase) -> tuple[dict, dict]:
        """Read a case's input files (canonical arrays and props by channel); NaN/inf refused with the file name."""
        arrays, props = {}, {}
        for channel, path in case.files.items():
            array, image_props = read_image(path)
            bad = count_nonfinite_voxels(path, array)
            if bad:
                raise ImageReadError(f"{path}: {bad} voxel(s) are NaN or infinite. Fix: repair or re-export the "
                                     "image (e.g. replace them with 0).")
            arrays[channel], props[channel] = array, image_props
        return arrays, props

    # ------------------------------------------------------------------ folders

    def output_paths(self, output_folder: Path, case_id: str) -> dict[str, Path]:
        """The files one case writes: the prediction, the std map (num_samples > 1) and the preview (--previews)."""
        ending = self._require_model().dataset_spec.file_ending
        out = {"prediction": output_folder / f"{case_id}{ending}"}
        if self.sampling.num_samples > 1:
            out["std"] = output_folder / f"{case_id}_std{ending}"
        if self.previews:
            out["preview"] = output_folder / f"{case_id}.png"
        if self.adapted is not None:
            out.update(self.adapted.extra_outputs(output_folder, case_id))
        return out

    def _predicted(self, case: InputCase, output_folder: Path) -> str:
        """Predict a case for the summary: no message for a case that went well."""
        self.predict_case(case, output_folder)
        return ""

    def predict_case(self, case: InputCase, output_folder: Path) -> dict[str, Path]:
        """Predict one input case and write its files (atomically); raises on any problem with the case."""
        if case.problem:
            raise ValueError(case.problem)
        outputs = self.output_paths(output_folder, case.case_id)
        arrays, props = self.read_case_inputs(case)
        mean, std, output_props, prepared = self.predict_volume(arrays, props, case.case_id, case.files)
        if std is not None:
            write_image(std, output_props, outputs["std"])
        if "preview" in outputs:
            rows = [("input", prepared.preview_input), ("output", mean)] + ([("std", std)] if std is not None else [])
            write_preview(outputs["preview"], rows, output_props["spacing"], title=case.case_id)
        if "lora" in outputs:
            with atomic_path(outputs["lora"]) as tmp:
                torch.save(self.adapted.last_weights, tmp)
        write_image(mean, output_props, outputs["prediction"])    # last: its presence means the case is done
        return outputs

    def predict_from_files(self, input_folder, output_folder, continue_prediction: bool = False, *,
                           num_parts: int = 1, part_id: int = 0) -> dict:
        """Predict every case of `input_folder` into `output_folder`; returns the summary (also written there).

        A failing case is recorded and skipped; the others finish. `continue_prediction` skips cases whose outputs
        exist; num_parts/part_id predict every num_parts-th case (parts run in parallel processes or machines).
        """
        model = self._require_model()
        if is_kspace(model.task_plans.get("degradation")):
            from diffens_auto.inference.recon_prediction import DDSReconstruction, predict_recon_folder
            if self.adaptation.active:
                from diffens_auto.inference.adapted_recon import AdaptedReconstruction
                reconstruction = AdaptedReconstruction(self, self.adaptation)
            else:
                reconstruction = DDSReconstruction(self)
            return predict_recon_folder(reconstruction, input_folder, output_folder, continue_prediction,
                                        num_parts=num_parts, part_id=part_id, progress=self.progress,
                                        previews=self.previews)
        input_folder, output_folder = Path(input_folder), Path(output_folder)
        if input_folder.resolve() == output_folder.resolve():
            raise PredictionSetupError(f"-o {output_folder} is the input folder. Fix: write predictions elsewhere.")
        if num_parts < 1 or not 0 <= part_id < num_parts:
            raise PredictionSetupError(f"-num_parts {num_parts} -part_id {part_id}: part_id must be in "
                                       "0..num_parts-1.")
        cases = split_into_parts(find_input_cases(input_folder, model.dataset_spec, self.condition_channels()),
                                 num_parts, part_id)
        output_folder.mkdir(parents=True, exist_ok=True)
        summary = PredictionSummary(output_folder, num_parts, part_id)
        settings = {**self.settings(), "input_folder": str(input_folder), "output_folder": str(output_folder),
                    "continue_prediction": continue_prediction, "num_parts": num_parts, "part_id": part_id,
                    "previews": self.previews, "slice_batch_size": self.sampling.slice_batch_size}
        if continue_prediction:
            check_same_settings(summary.settings_file, settings)
        if num_parts == 1:      # parts share the folder: another part's write in progress must not be removed
            remove_stale_temporary_files(output_folder)
        atomic_write_json(settings, summary.settings_file)
        for case in tqdm(cases, desc="cases", unit="case", disable=not self.progress):
            outputs = self.output_paths(output_folder, case.case_id)
            if continue_prediction and all(p.is_file() for p in outputs.values()):
                summary.add(case.case_id, "skipped", "already predicted (--continue_prediction)", 0.0,
                            outputs=outputs, inputs=case.files)
                continue
            summary.run_case(case.case_id, lambda: self._predicted(case, output_folder),
                             outputs=outputs, inputs=case.files)
            summary.write()
        summary.write()
        return summary.as_dict()

    def condition_channels(self) -> list[int]:
        """Dataset channels a case of this task must provide."""
        return [int(c) for c in self._require_model().task_plans["condition_channels"]]
