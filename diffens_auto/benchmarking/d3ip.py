"""`diffens_benchmark d3ip`: test-time adaptation of a prior trained on ellipsoid phantoms (the paper's setting).

The priors are the recon demo's (`diffens_demo --recon`): the 2D axial expert of dataset 901 (ellipsoids) and of
dataset 900 (brain phantoms), trained on 8 phantoms of 48^3 each; `--models FOLDER` takes a finished demo folder
(read only), otherwise the demo runs first in the work folder (training time is not counted in the table). The test
bundles (8x Poisson-disc undersampling per axial slice, acs 6) are the demo's held-out brain phantoms and nibabel's
real T1 crop (out of distribution for the ellipsoid prior), and held-out ellipsoid phantoms degraded with dataset
901's recon task (in distribution: the control).

Rows (`METHODS`): zero-filled, DDS and D3IP (3 seeds on the brain phantoms, one elsewhere), D3IP-mbir, D3IP-meta and
DDIP (one seed, brain phantoms only; DDIP on a few slices per case, its time extrapolated to the volume), DDS with the
brain prior (the in-distribution ceiling) and D3IP with an untrained prior of the same architecture (what a
deep-image-prior effect alone gives; brain phantoms only). Then the SR row (`d3ip_sr.py`): the SR demo's
Diff-Ensembler with and without `--adapt d3ip`. The default sizes (one brain phantom) fit 20 minutes on 2 CPU
cores; `--phantoms N` takes more of the demo's held-out phantoms. DDS and every D3IP variant
share sampler, steps, gamma, CG steps, start and sampler seeds (the plans' dds section): they differ only by the
adaptation. Each reconstruction runs through the prediction code (`prepare_recon_case`, the DDS / adapted
reconstruction of a predictor loaded from the results folder), in-process, without writing files.
Peak memory: the project's tensor tracker over a 3-step probe of one phantom per method (every live tensor).
Before it starts the benchmark measures a sampling step of DDS and of D3IP and prints the projected total.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffens_auto import paths
from diffens_auto.atomic import atomic_write_json, atomic_write_text
from diffens_auto.benchmarking.d3ip_report import ddip_time_per_slice, format_d3ip_table, memory_proof, summarise
from diffens_auto.benchmarking.d3ip_sr import (SR_GROUP, SR_GROUP_NAME, SR_ROWS, run_sr_rows, sr_models_folder,
                                               sr_references, sr_step_seconds)
from diffens_auto.benchmarking.memory_tracker import PeakMemoryTracker
from diffens_auto.demo import recon as demo
from diffens_auto.demo.dataset import make_demo_dataset
from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.diffusion.strategies import SingleExpert
from diffens_auto.errors import DiffensError
from diffens_auto.evaluation import psnr, ssim3d
from diffens_auto.imageio import read_image, read_kspace_bundle
from diffens_auto.inference.adapted_recon import AdaptedReconstruction
from diffens_auto.inference.degrade_inputs import degrade_folder
from diffens_auto.inference.model import load_task_plans
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.inference.recon_prediction import DDSReconstruction, prepare_recon_case, zero_filled_magnitude
from diffens_auto.inference.sampling_settings import AdaptationRequest
from diffens_auto.networks import build_expert

PHANTOMS, REAL, CONTROLS = "phantoms", "real", "ellipses"
GROUP_NAMES = {PHANTOMS: "brain phantoms (out of distribution)", REAL: "nibabel's real T1 (out of distribution)",
               CONTROLS: "ellipsoid phantoms (in distribution, the control)", SR_GROUP: SR_GROUP_NAME}
RECON_GROUPS = (PHANTOMS, REAL, CONTROLS)
UNTRAINED = "untrained"
CONTROL_SEED_OFFSET = 2000


class D3IPBenchmarkError(DiffensError, ValueError):
    """A models folder or setting the benchmark cannot use, with the fix."""


@dataclass(frozen=True)
class Method:
    """One row: zero-filled (adapt None), or DDS / a D3IP variant with the prior of a dataset id (or untrained);
    `all_seeds`: every seed on the brain phantoms (one seed on the other groups)."""

    name: str
    adapt: str | None
    prior: int | str | None
    all_seeds: bool = False
    groups: tuple = RECON_GROUPS


METHODS = (Method("Zero-filled", None, None),
           Method("DDS, ellipsoid prior", "none", demo.ELLIPSES_ID, True),
           Method("D3IP, ellipsoid prior", "d3ip", demo.ELLIPSES_ID, True),
           Method("D3IP-mbir, ellipsoid prior", "d3ip_mbir", demo.ELLIPSES_ID, groups=(PHANTOMS,)),
           Method("D3IP-meta, ellipsoid prior", "d3ip_meta", demo.ELLIPSES_ID, groups=(PHANTOMS,)),
           Method("DDIP, ellipsoid prior (a few slices)", "ddip", demo.ELLIPSES_ID, groups=(PHANTOMS,)),
           Method("DDS, brain prior (in-distribution ceiling)", "none", demo.BRAIN_ID, True),
           Method("D3IP, untrained prior", "d3ip", UNTRAINED, groups=(PHANTOMS,)))


@dataclass(frozen=True)
class D3IPSettings:
    """Sizes of one run."""

    num_phantoms: int = 1            # of the demo's held-out brain phantoms
    num_controls: int = 1            # held-out ellipsoid phantoms
    seeds: tuple = (0, 1, 2)
    steps: int = 50
    ddip_slices: int = 2             # per case, spread over the volume
    ddip_timing_steps: int = 10      # DDIP's time on 1, 2, 4 slices (linear in the slices at any step count)
    adapt_overrides: dict = field(default_factory=dict)
    demo_setting: str = "full"
    sr_ellipses: int = 1             # the SR row's ellipsoid phantoms (besides the real T1)
    sr_steps: int = 20               # the SR demo's sampling steps


FULL = D3IPSettings()
QUICK = D3IPSettings(num_phantoms=1, num_controls=1, seeds=(0,), steps=3, ddip_slices=1, ddip_timing_steps=2,
                     adapt_overrides={"steps": 1, "slices": 2}, demo_setting="smoke", sr_steps=2)


def _models_folder(work: Path, models: Path | None, settings: D3IPSettings, device) -> Path:
    """The recon demo folder with the trained priors: `models` as given, or the demo run (resumed) in `work`."""
    if models is None:
        demo.run_recon_demo(work / "recon_demo", setting=settings.demo_setting, device=device, verbose=True)
        models = work / "recon_demo"
    for required in ("results", "test_bundles/phantoms", "test_bundles/real"):
        if not (models / required).exists():
            raise D3IPBenchmarkError(f"--models {models}: no {required} there. Fix: give the folder of a finished "
                                     "`diffens_demo --recon -o FOLDER` run, or leave --models out to run it.")
    paths.use_folders(models)
    return models


def _control_bundles(work: Path, settings: D3IPSettings, seed: int = 0) -> Path:
    """Held-out ellipsoid phantoms (a seed training never saw), degraded with dataset 901's recon task."""
    out = work / "bundles" / CONTROLS
    if out.is_dir() and len(list(out.glob("*.npz"))) >= settings.num_controls:
        return out
    shape, spacing = demo.SETTINGS[settings.demo_setting].shape, demo.SETTINGS[settings.demo_setting].spacing
    cases = make_demo_dataset(work / "control_cases", demo.ELLIPSES_ID, num_cases=settings.num_controls,
                              shape=tuple(shape), spacing=tuple(spacing), seed=CONTROL_SEED_OFFSET + seed, noise=0.0,
                              kind="ellipses")
    summary = degrade_folder(cases / "imagesTr", out, demo.ELLIPSES_ID, demo.TASK, verbose=False, seed=seed)
    if summary["num_failed"]:
        raise RuntimeError(f"diffens_benchmark d3ip: diffens_degrade failed: {summary['cases']}")
    return out


def test_bundles(models: Path, work: Path, settings: D3IPSettings) -> dict:
    """{group: [bundle paths]} of the run."""
    phantoms = sorted((models / "test_bundles" / PHANTOMS).glob("*.npz"))[:settings.num_phantoms]
    real = sorted((models / "test_bundles" / REAL).glob("*.npz"))
    controls = sorted(_control_bundles(work, settings).glob("*.npz"))[:settings.num_controls]
    return {PHANTOMS: phantoms, REAL: real, CONTROLS: controls}


def _untrained(predictor: DiffensPredictor) -> None:
    """Replace the loaded prior by an untrained network of the same plans (seed 0)."""
    model = predictor.model
    name, runner = next(iter(model.runners.items()))
    torch.manual_seed(0)
    network = model.plans["configurations"][name]["network"]
    network = {**network, "in_channels": model.plans["configurations"][name]["in_channels_per_task"][model.task]}
    fresh = ExpertRunner.from_network(build_expert(network).eval().to(predictor.device), network, runner.slice_axis,
                                      runner.slice_batch_size, name=name)
    predictor.model = dataclasses.replace(model, runners={name: fresh}, strategy=SingleExpert(fresh))


def reconstruction_for(method: Method, seed: int, settings: D3IPSettings, device, *, steps: int | None = None,
                       start_timestep: int | None = None):
    """The reconstruction object of a row (DDS or adapted), from the trained model of its prior."""
    overrides = {} if method.adapt == "none" else dict(settings.adapt_overrides)
    if method.adapt == "ddip":
        overrides.pop("slices", None)
    request = AdaptationRequest(method.adapt, overrides)
    predictor = DiffensPredictor(steps=steps or settings.steps, seed=seed, device=device, progress=False,
                                 adaptation=request, start_timestep=start_timestep)
    prior = demo.ELLIPSES_ID if method.prior == UNTRAINED else method.prior
    predictor.initialize_from_trained_model(prior, demo.TASK, "2d_axial", fold="all")
    if method.prior == UNTRAINED:
        _untrained(predictor)
    return AdaptedReconstruction(predictor, request) if request.active else DDSReconstruction(predictor)


def ddip_slice_indices(num_slices: int, count: int) -> list[int]:
    """`count` slices spread evenly inside the volume (the outermost avoided)."""
    return sorted({int(round(v)) for v in np.linspace(0, num_slices - 1, count + 2)[1:-1]})


def _reconstruct(method: Method, reconstruction, case, seed: int, ddip: list[int]) -> np.ndarray:
    if method.adapt is None:
        return zero_filled_magnitude(case)
    if method.adapt == "ddip":
        adapted = reconstruction.adapted_runners(case)
        return reconstruction.ddip_slices(case, adapted, seed, slices=ddip)[0]
    return reconstruction.reconstruct(case)[0]


def run_case(method: Method, bundle: Path, seed: int, settings: D3IPSettings, device) -> dict:
    """PSNR / SSIM (whole volume) and PSNR on the DDIP slices of one method, seed and bundle, with its seconds."""
    reconstruction = None if method.adapt is None else reconstruction_for(method, seed, settings, device)
    plans = reconstruction.plans if reconstruction is not None else load_task_plans(demo.BRAIN_ID, demo.TASK)[1]
    case = prepare_recon_case(read_kspace_bundle(bundle), plans, demo.TASK, bundle.stem)
    reference, _ = read_image(bundle.parent / f"{bundle.stem}_reference.nii.gz")
    axis = case.slice_axis
    ddip = ddip_slice_indices(case.shape[axis], settings.ddip_slices)
    started = time.perf_counter()
    image = _reconstruct(method, reconstruction, case, seed, ddip)
    seconds = time.perf_counter() - started
    on_slices = np.zeros(reference.shape, dtype=bool)
    on_slices[(slice(None),) * axis + (ddip,)] = True
    data_range = float(reference.max() - reference.min())
    row = {"case": bundle.stem, "seed": seed, "seconds": seconds,
           "psnr_ddip_slices": psnr(reference, image, data_range, on_slices)}
    if method.adapt == "ddip":      # a few slices: time per volume extrapolated, whole-volume metrics undefined
        row.update(psnr=None, ssim=None, seconds=seconds * case.shape[axis] / len(ddip), extrapolated=True)
    else:
        row.update(psnr=psnr(reference, image, data_range), ssim=ssim3d(reference, image, data_range))
    return row


def probe_peak(method: Method, bundle: Path, settings: D3IPSettings, device) -> int | None:
    """Peak live tensor bytes of a 3-step reconstruction of one bundle (the zero-filled baseline: None)."""
    if method.adapt is None:
        return None
    reconstruction = reconstruction_for(method, 0, settings, device, steps=3)
    case = prepare_recon_case(read_kspace_bundle(bundle), reconstruction.plans, demo.TASK, bundle.stem)
    ddip = ddip_slice_indices(case.shape[case.slice_axis], 1)
    tracker = PeakMemoryTracker()
    tracker.track([p for r in reconstruction.predictor.model.runners.values() for p in r.expert.parameters()])
    with tracker:
        _reconstruct(method, reconstruction, case, 0, ddip)
    return tracker.peak_bytes


def step_seconds(bundle: Path, settings: D3IPSettings, device) -> dict:
    """Seconds of one sampling step of DDS and of an adapted D3IP step: two-step chains from t = 500 (inside the
    horizon) to 0 (outside it), so D3IP's chain is one adapted step and one plain one."""
    measured = {}
    for method in (METHODS[1], METHODS[2]):
        reconstruction = reconstruction_for(method, 0, settings, device, steps=2, start_timestep=500)
        case = prepare_recon_case(read_kspace_bundle(bundle), reconstruction.plans, demo.TASK, bundle.stem)
        started = time.perf_counter()
        reconstruction.reconstruct(case)
        measured[method.adapt] = time.perf_counter() - started
    measured["none"] /= 2
    measured["d3ip"] -= measured["none"]
    return measured


def runs_of(method: Method, groups: dict, settings: D3IPSettings) -> list[tuple[str, Path, int]]:
    """(group, bundle, seed) of every reconstruction of a row."""
    return [(group, bundle, seed) for group in method.groups for bundle in groups[group]
            for seed in (settings.seeds if method.all_seeds and group == PHANTOMS else settings.seeds[:1])]


def projected_seconds(groups: dict, settings: D3IPSettings, steps: dict) -> float:
    """A rough total: every row's volumes x steps x the measured step time (mbir, meta as D3IP; DDIP its slices),
    plus the SR row's two predictions per case."""
    total = 0.0
    for method in METHODS:
        if method.adapt is None:
            continue
        per_step = steps["none"] if method.adapt == "none" else steps["d3ip"]
        share = settings.ddip_slices / 48 if method.adapt == "ddip" else 1.0
        total += len(runs_of(method, groups, settings)) * settings.steps * per_step * share
    total += settings.ddip_timing_steps * 7 / 48 * steps["d3ip"]            # DDIP on 1 + 2 + 4 slices
    # the SR row predicts each input twice: without and with D3IP
    return total + (1 + settings.sr_ellipses) * settings.sr_steps * (2 * steps["sr_none"] + steps["sr_d3ip"])


def benchmark_d3ip(work_folder, models=None, *, sr_models=None, quick: bool = False, phantoms: int | None = None,
                   device="cpu") -> dict:
    """Run the benchmark in `work_folder` (module docstring); returns its results (also d3ip.json, d3ip_table.md)."""
    settings = QUICK if quick else FULL
    if phantoms is not None:
        if phantoms < 1:
            raise D3IPBenchmarkError(f"--phantoms {phantoms}: give at least 1.")
        settings = dataclasses.replace(settings, num_phantoms=int(phantoms))
    work = Path(work_folder).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = _models_folder(work, None if models is None else Path(models).resolve(), settings, device)
    groups = test_bundles(models, work, settings)
    steps = step_seconds(groups[PHANTOMS][0], settings, device)
    sr_models = sr_models_folder(work, None if sr_models is None else Path(sr_models).resolve(),
                                 settings.demo_setting, device)
    sr_cases = sr_references(work, settings.demo_setting, settings.sr_ellipses)
    steps.update(sr_step_seconds(sr_models, sr_cases, dict(settings.adapt_overrides), device))
    paths.use_folders(models)
    projected = projected_seconds(groups, settings, steps)
    print(f"[d3ip] a sampling step: DDS {steps['none']:.2f} s, D3IP {steps['d3ip']:.2f} s; SR: Diff-Ensembler "
          f"{steps['sr_none']:.2f} s, with D3IP {steps['sr_d3ip']:.2f} s; projected total {projected / 60:.1f} min "
          f"for {sum(len(b) for b in groups.values())} recon volumes and {len(sr_cases)} SR inputs", flush=True)
    started = time.perf_counter()
    rows = []
    for method in METHODS:
        for group, bundle, seed in runs_of(method, groups, settings):
            rows.append({"method": method.name, "group": group, **run_case(method, bundle, seed, settings, device)})
        print(f"[d3ip] {method.name}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    peaks = {method.name: probe_peak(method, groups[PHANTOMS][0], settings, device) for method in METHODS}
    ddip, first = reconstruction_for(METHODS[5], 0, settings, device, steps=settings.ddip_timing_steps), \
        groups[PHANTOMS][0]
    case = prepare_recon_case(read_kspace_bundle(first), ddip.plans, demo.TASK, first.stem)
    adapted = ddip.adapted_runners(case)
    ddip_seconds = ddip_time_per_slice(ddip, case, adapted)
    proof = memory_proof(adapted[0], tuple(n for a, n in enumerate(case.shape) if a != case.slice_axis))
    rows += [{**row, "psnr_ddip_slices": None} for row in run_sr_rows(
        sr_models, sr_cases, steps=settings.sr_steps, overrides=dict(settings.adapt_overrides), device=device)]
    print(f"[d3ip] SR rows: done ({time.perf_counter() - started:.0f} s)", flush=True)
    sr_methods = [Method(name, None, None) for name in SR_ROWS]
    results = {"settings": {**dataclasses.asdict(settings), "device": str(device), "models": str(models),
                            "sr_models": str(sr_models)},
               "groups": {**{group: [b.stem for b in bundles] for group, bundles in groups.items()},
                          SR_GROUP: list(sr_cases)},
               "rows": rows, "summary": summarise(rows, [*METHODS, *sr_methods], GROUP_NAMES), "peak_bytes": peaks,
               "step_seconds": steps, "projected_seconds": projected, "memory_proof": proof,
               "ddip_seconds": ddip_seconds,
               "total_seconds": round(time.perf_counter() - started, 1)}
    atomic_write_json(json.loads(json.dumps(results, default=float)), work / "d3ip.json")
    atomic_write_text(format_d3ip_table(results, GROUP_NAMES), work / "d3ip_table.md")
    return results
