"""One case: read its files, check they share the reference's grid, and compute the metrics of every region."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffens_auto.errors import DiffensError
from diffens_auto.evaluation.case_files import CaseFiles
from diffens_auto.evaluation.metrics import mace, mae, psnr, reference_data_range
from diffens_auto.evaluation.mmd import case_rng, extract_patches, sample_patch_corners
from diffens_auto.evaluation.ssim import LocalMoments, local_moments, mean_ssim
from diffens_auto.imageio import ImageReadError, check_same_geometry, count_nonfinite_voxels, read_image

METRICS = ("psnr", "ssim", "mae", "mace")
COLUMNS = ("case", "region", *METRICS, "data_range", "num_voxels", "status", "message")
REGION_ALL = "all"
REGION_FOREGROUND = "foreground"


@dataclass(frozen=True)
class EvaluationSettings:
    """What every case is evaluated with; data_range None means the reference's max − min per region."""
    data_range: float | None = None
    mmd: bool = True
    patch_size: tuple[int, int, int] = (8, 8, 8)
    patches_per_case: int = 32
    seed: int = 0


class CaseFailed(DiffensError):
    """A case cannot be evaluated; the message names its files and the fix."""


def result_row(case: str, region: str, status: str, message: str = "", *, num_voxels: int = 0,
               data_range: float = float("nan"), **metrics: float) -> dict:
    """A row of the per-case table; metrics left out are NaN (not available)."""
    return {"case": case, "region": region, **{m: metrics.get(m, float("nan")) for m in METRICS},
            "data_range": data_range, "num_voxels": num_voxels, "status": status, "message": message}


def _read_on_grid(path, reference_props: dict, reference_path, role: str) -> tuple[np.ndarray, str]:
    """Read an image that must lie on the reference's voxel grid; returns (array, note).

    A grid that only extends past the reference's far corner (same origin, spacing and direction, larger shape:
    a super-resolution output whose last block was partial) is cropped to the reference's shape, with a note.
    """
    array, props = read_image(path)
    problems = check_same_geometry(reference_props, props)
    shape, reference_shape = list(props["shape"]), list(reference_props["shape"])
    extends = all(n >= r for n, r in zip(shape, reference_shape)) and \
        not check_same_geometry(reference_props, {**props, "shape": reference_shape})
    if problems and extends:
        array = array[tuple(slice(0, r) for r in reference_shape)]
        return array, f"{role} cropped from {shape} to the reference's {reference_shape} (same grid, larger shape)"
    if problems:
        raise CaseFailed(f"{role} {path} is not on the voxel grid of reference {reference_path}: "
                         f"{'; '.join(problems)}. Fix: write the {role} on the reference's grid (same shape, spacing, "
                         "origin and direction), e.g. SimpleITK.Resample(image, reference_image), or check that both "
                         "files belong to this case.")
    return array, ""


def regions(reference: np.ndarray, mask: np.ndarray | None) -> list[tuple[str, np.ndarray | None]]:
    """(name, voxels) of each region: all + foreground (reference ≠ 0), or all (mask > 0) + each label's voxels."""
    if mask is None:
        return [(REGION_ALL, None), (REGION_FOREGROUND, reference != 0)]
    labels = np.rint(mask).astype(np.int64)
    return [(REGION_ALL, labels > 0)] + [(f"label_{int(v)}", labels == v) for v in np.unique(labels[labels > 0])]


def region_row(case: str, name: str, region: np.ndarray | None, reference: np.ndarray, prediction: np.ndarray, *,
               std: np.ndarray | None, moments: LocalMoments | None, data_range: float | None) -> dict:
    """The metrics of one region of one case, with notes on the values that are undefined."""
    num_voxels = int(reference.size if region is None else np.count_nonzero(region))
    if num_voxels == 0:
        return result_row(case, name, "ok", "empty region: no voxel to evaluate")
    if data_range is None:
        data_range = reference_data_range(reference, region)
    notes, scaled, nan = [], data_range > 0, float("nan")
    row = result_row(case, name, "ok", num_voxels=num_voxels, data_range=data_range,
                     psnr=psnr(reference, prediction, data_range, region) if scaled else nan,
                     ssim=mean_ssim(moments, data_range, region) if scaled and moments is not None else nan,
                     mae=mae(reference, prediction, region),
                     mace=mace(reference, prediction, std, region) if std is not None else nan)
    if not scaled:
        notes.append("the reference is constant here (data range 0): PSNR and SSIM are undefined")
    elif row["psnr"] == float("inf"):
        notes.append("the prediction equals the reference here: PSNR is infinite (null in JSON, inf in CSV)")
    if scaled and moments is not None and np.isnan(row["ssim"]):
        notes.append(f"no voxel of this region lies {(moments.window - 1) // 2} voxels inside the faces: SSIM is "
                     "undefined")
    row["message"] = "; ".join(notes)
    return row


def _patches(case: str, reference: np.ndarray, prediction: np.ndarray, mask: np.ndarray | None,
             settings: EvaluationSettings) -> tuple[np.ndarray, np.ndarray] | None:
    """Reference and prediction patches at the same seeded foreground positions (None if a patch does not fit)."""
    foreground = reference != 0 if mask is None else np.rint(mask) > 0
    corners = sample_patch_corners(foreground, settings.patch_size, settings.patches_per_case,
                                   case_rng(case, settings.seed))
    if corners is None:
        return None
    return extract_patches(reference, corners, settings.patch_size), extract_patches(prediction, corners,
                                                                                      settings.patch_size)


def _evaluate(files: CaseFiles, settings: EvaluationSettings):
    if files.problem is not None:
        raise CaseFailed(files.problem)
    reference, props = read_image(files.reference)
    prediction, crop_note = _read_on_grid(files.prediction, props, files.reference, "prediction")
    # A diverged sampler writes NaN, which ITK's NIfTI reader turns into 0 and the metrics would not show.
    nonfinite = count_nonfinite_voxels(files.prediction, prediction)
    if nonfinite:
        raise CaseFailed(f"prediction {files.prediction} has {nonfinite} NaN/inf voxel(s). Fix: predict this case "
                         "again (in float32 if it ran in float16).")
    std = None if files.std is None else _read_on_grid(files.std, props, files.reference, "uncertainty map")[0]
    mask = None if files.mask is None else _read_on_grid(files.mask, props, files.reference, "mask")[0]
    try:
        moments, ssim_note = local_moments(reference, prediction), ""
    except ValueError as too_small:
        moments, ssim_note = None, f"SSIM is undefined: {too_small}"
    rows = []
    for name, region in regions(reference, mask):
        row = region_row(files.case, name, region, reference, prediction, std=std, moments=moments,
                         data_range=settings.data_range)
        row["message"] = "; ".join(note for note in (row["message"], crop_note, ssim_note) if note)
        rows.append(row)
    patches = _patches(files.case, reference, prediction, mask, settings) if settings.mmd else None
    return rows, patches


def evaluate_case(files: CaseFiles, settings: EvaluationSettings) -> tuple[list[dict], tuple | None]:
    """Rows (one per region, or one failed row) and the case's (reference, prediction) MMD patches or None."""
    try:
        return _evaluate(files, settings)
    except (CaseFailed, ImageReadError) as problem:
        return [result_row(files.case, REGION_ALL, "failed", str(problem))], None
    except Exception as error:  # one bad case is reported, never fatal to the others
        return [result_row(files.case, REGION_ALL, "failed", f"{type(error).__name__}: {error}")], None


def evaluate_case_job(case: str, files: CaseFiles, settings: EvaluationSettings):
    """evaluate_case with the case name first, as worker jobs name their case."""
    return evaluate_case(files, settings)
