"""The demo's results: one row per method (the paper's Table 1 columns plus MAE, MMD² and time) and comparison PNGs."""
from __future__ import annotations

from pathlib import Path

from diffens_auto.imageio import read_image
from diffens_auto.inference.previews import write_preview


def results_table(evaluations: dict, seconds: dict) -> list[dict]:
    """Rows {method, psnr, ssim, mae, mmd2, seconds_per_volume, num_cases} from evaluate_folders' results."""
    rows = []
    for method, results in evaluations.items():
        whole = results["mean"].get("all", {})
        rows.append({"method": method, "psnr": whole.get("psnr"), "ssim": whole.get("ssim"),
                     "mae": whole.get("mae"), "mmd2": results["dataset"]["mmd2"],
                     "seconds_per_volume": seconds.get(method), "num_cases": whole.get("num_cases"),
                     "failed": [f["case"] for f in results["failed"]]})
    return rows


def comparison_previews(work: Path, methods, sr_factor: int) -> list[Path]:
    """One PNG per test case: the reference FLAIR, then every (row name, predictions folder)'s output, 3 planes."""
    written = []
    for reference_file in sorted((work / "test_cases" / "imagesTr").glob("*_0003.nii.gz")):
        case = reference_file.name[: -len("_0003.nii.gz")]
        reference, props = read_image(reference_file)
        rows = [("reference", reference)]
        for method, folder in methods:
            prediction = work / "predictions" / folder / f"{case}.nii.gz"
            if prediction.is_file():
                rows.append((method, read_image(prediction)[0]))
        written.append(write_preview(work / "previews" / f"{case}.png", rows, props["spacing"],
                                     title=f"{case}: {sr_factor}x super-resolution of FLAIR"))
    return written
