"""The recon demo's results: rows per method on the held-out phantoms and on the real scan, the acceptance lines
(in-distribution DDS >= zero-filled + 3 dB, out-of-distribution DDS >= zero-filled + 1 dB, the gap between the
priors), the markdown table and comparison PNGs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffens_auto.imageio import read_image
from diffens_auto.inference.previews import write_preview

# the predictions/<folder> of the three methods, by their role in the acceptance lines
ZERO_FILLED, OUT_OF_DISTRIBUTION, IN_DISTRIBUTION = "zero_filled", "dds_ellipses", "dds_brain"
PHANTOMS, REAL = "phantoms", "real"
# (line, the row that must beat the baseline, the margin in dB)
CHECKS = (("in-distribution DDS (brain prior) >= zero-filled + 3 dB", IN_DISTRIBUTION, 3.0),
          ("out-of-distribution DDS (ellipsoid prior) >= zero-filled + 1 dB", OUT_OF_DISTRIBUTION, 1.0))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def recon_rows(evaluations: dict, predicted: dict, previous: dict,
               folders: dict) -> tuple[list[dict], list[dict], dict]:
    """(rows on the phantoms, rows of the real scan's case(s), {method: {case: seconds}}).

    `evaluations` and `predicted`: {method: {group: evaluate_folders' results | {case: seconds}}}; `folders`:
    {method: its predictions folder}. Seconds of cases a resumed run skipped come from `previous` (the earlier
    run's seconds_per_case)."""
    table, real_rows, seconds = [], [], {}
    for method, groups in evaluations.items():
        seconds[method] = {**previous.get(method, {}), **predicted[method][PHANTOMS], **predicted[method][REAL]}
        evaluation = groups[PHANTOMS]
        whole = evaluation["mean"].get("all", {})
        cases = sorted({r["case"] for r in evaluation["per_case"]})
        table.append({"method": method, "folder": folders[method], "psnr": whole.get("psnr"),
                      "ssim": whole.get("ssim"), "mae": whole.get("mae"),
                      "seconds_per_volume": _mean(seconds[method].get(c) for c in cases),
                      "num_cases": whole.get("num_cases"), "failed": [f["case"] for f in evaluation["failed"]]})
        for row in groups[REAL]["per_case"]:
            if row["region"] == "all":
                real_rows.append({"method": method, "folder": folders[method], "case": row["case"],
                                  "psnr": row["psnr"], "ssim": row["ssim"], "mae": row["mae"],
                                  "seconds": seconds[method].get(row["case"]), "status": row["status"]})
    return table, real_rows, seconds


def _psnr_of(rows: list[dict], folder: str) -> float | None:
    return next((row["psnr"] for row in rows if row["folder"] == folder), None)


def acceptance(table: list[dict], real_rows: list[dict]) -> list[dict]:
    """The acceptance lines on the held-out phantoms, then the gap between the priors there and on the real scan."""
    checks = []
    baseline = _psnr_of(table, ZERO_FILLED)
    for line, folder, margin in CHECKS:
        value = _psnr_of(table, folder)
        gain = None if value is None or baseline is None else value - baseline
        checks.append({"check": line, "psnr": value, "zero_filled_psnr": baseline, "gain_db": gain,
                       "passed": gain is not None and gain >= margin})
    for where, rows in (("held-out phantoms", table), ("real scan", real_rows)):
        brain, ellipses = _psnr_of(rows, IN_DISTRIBUTION), _psnr_of(rows, OUT_OF_DISTRIBUTION)
        checks.append({"check": f"gap between the priors on the {where} (brain - ellipsoid)",
                       "gain_db": None if brain is None or ellipses is None else brain - ellipses, "passed": None})
    return checks


def _cell(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def acceptance_lines(checks: list[dict]) -> list[str]:
    """One line per acceptance check: PASS / FAIL with the numbers, or the gap alone."""
    lines = []
    for check in checks:
        if check["passed"] is None:
            lines.append(f"- {check['check']}: {_cell(check['gain_db'], 2)} dB")
        else:
            lines.append(f"- {'PASS' if check['passed'] else 'FAIL'} {check['check']}: {_cell(check['psnr'], 2)} "
                         f"vs {_cell(check['zero_filled_psnr'], 2)} dB ({_cell(check['gain_db'], 2)} dB)")
    return lines


def format_recon_table(summary: dict) -> str:
    """The recon demo's results as markdown: the phantoms' table, the real scan's rows and the acceptance lines."""
    settings, kspace = summary["settings"], summary["settings"]["kspace"]
    smoke = " (smoke run: meaningless numbers)" if settings["smoke"] else ""
    mask = "Poisson-disc" if kspace["mask"] == "poisson" else kspace["mask"]
    lines = [f"Reconstruction of {settings['target']} from {kspace['acceleration']:g}x {mask} undersampled k-space "
             f"(acs {kspace.get('acs', 12)}, one mask per axial slice), {settings['num_test_cases']} held-out brain "
             f"phantom(s), {settings['steps']} DDS steps, seed {settings['seed']}{smoke}", "",
             "| method | PSNR (dB) | SSIM | MAE | s / volume |", "|---|---|---|---|---|"]
    for row in summary["table"]:
        lines.append(f"| {row['method']} | {_cell(row['psnr'], 2)} | {_cell(row['ssim'], 4)} | "
                     f"{_cell(row['mae'], 2)} | {_cell(row['seconds_per_volume'], 1)} |")
    lines += ["", "The real scan (nibabel's anatomical.nii, a T1 crop, out of distribution for both priors):", "",
              "| method | case | PSNR (dB) | SSIM | MAE | s / volume |", "|---|---|---|---|---|---|"]
    for row in summary["real_case"]:
        lines.append(f"| {row['method']} | {row['case']} | {_cell(row['psnr'], 2)} | {_cell(row['ssim'], 4)} | "
                     f"{_cell(row['mae'], 2)} | {_cell(row['seconds'], 1)} |")
    lines += ["", "Acceptance (held-out phantoms, PSNR over the whole volume):",
              *acceptance_lines(summary["acceptance"])]
    return "\n".join(lines) + "\n"


def recon_previews(work: Path, methods) -> list[Path]:
    """One PNG per test case: its reference, then every (row name, predictions folder)'s output, 3 planes."""
    written = []
    for group in (PHANTOMS, REAL):
        for reference_file in sorted((work / "test_bundles" / group).glob("*_reference.nii.gz")):
            case = reference_file.name[: -len("_reference.nii.gz")]
            reference, props = read_image(reference_file)
            rows = [("reference", reference)]
            for method, folder in methods:
                prediction = work / "predictions" / folder / group / f"{case}.nii.gz"
                if prediction.is_file():
                    rows.append((method, read_image(prediction)[0]))
            written.append(write_preview(work / "previews" / f"{case}.png", rows, props["spacing"],
                                         title=f"{case}: reconstruction from undersampled k-space"))
    return written
