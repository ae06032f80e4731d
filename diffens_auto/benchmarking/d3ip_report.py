"""The d3ip benchmark's figures: rows per method and group, the memory proof, DDIP's time per slice, the table."""
from __future__ import annotations

import time

import numpy as np
import torch

from diffens_auto.adaptation import AdaptationSettings, AdaptingDenoiser, KSpaceSlices
from diffens_auto.benchmarking.memory_tracker import PeakMemoryTracker
from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.slicing import position_channels
from diffens_auto.diffusion.strategies import SingleExpert
from diffens_auto.operators import FileOrderKSpace

PROOF_SLICES = (12, 24, 48)
# alive through an adaptation phase besides the networks, in float32 volumes: y_t, the 3 position channels, the
# measurement (complex64: 2) and the per-slice mask
VOLUME_BUFFERS = 1 + 3 + 2 + 1
_IDENTITY = {"permutation": [0, 1, 2], "flips": [False, False, False]}


def _mean_se(values) -> tuple[float | None, float | None]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return float(np.mean(values)), se


def summarise(rows: list[dict], methods, group_names: dict) -> list[dict]:
    """Per method and group: PSNR mean over cases, then mean and SE over seeds (over cases for one seed), SSIM,
    seconds per volume, PSNR on the DDIP slices."""
    out = []
    for method in methods:
        for group in group_names:
            picked = [r for r in rows if r["method"] == method.name and r["group"] == group]
            if not picked:
                continue
            seeds = sorted({r["seed"] for r in picked})
            by_seed = [[r["psnr"] for r in picked if r["seed"] == s] for s in seeds]
            if len(seeds) > 1:
                psnr, se = _mean_se([np.mean(v) if None not in v else None for v in by_seed])
            else:
                psnr, se = _mean_se(r["psnr"] for r in picked)
            out.append({"method": method.name, "group": group, "seeds": len(seeds), "cases": len(picked) // len(seeds),
                        "psnr": psnr, "psnr_se": se, "ssim": _mean_se(r["ssim"] for r in picked)[0],
                        "psnr_ddip_slices": _mean_se(r["psnr_ddip_slices"] for r in picked)[0],
                        "seconds": _mean_se(r["seconds"] for r in picked)[0]})
    return out


def memory_proof(runner, plane=(48, 48), *, slices: int = 6, steps: int = 2, device="cpu") -> dict:
    """Peak live tensor bytes of one adaptation phase (K = `slices`, L = `steps`) for N = 12, 24, 48 slices of a
    random per-slice-masked problem, and that peak minus the stated volume buffers (flat if O(1) in N)."""
    proof = {}
    for count in PROOF_SLICES:
        generator = torch.Generator().manual_seed(count)
        shape = (*plane, count)
        mask = (torch.rand(shape, generator=generator) > 0.6).float().to(device)
        operator = FileOrderKSpace(_IDENTITY, mask, [0, 1])
        y = operator.A(torch.rand((1, 1, *shape), generator=generator).to(device))
        y_t = torch.randn((1, 1, *shape), generator=generator).to(device)
        frame = position_channels(shape, device=device)
        settings = AdaptationSettings(method="d3ip", slices=slices, steps=steps, lr=1e-4)
        adapter = AdaptingDenoiser(SingleExpert(runner), [runner], KSpaceSlices(operator, y, [(0, 0)] * 3, 2),
                                   settings, schedule=NoiseSchedule.linear(), timesteps=[500], frame=frame)
        adapter.begin(0)
        tracker = PeakMemoryTracker()
        tracker.track(y_t, frame, y, mask, list(runner.expert.parameters()))
        with tracker, torch.no_grad():
            adapter(y_t, y_t.new_zeros((1, 0, *shape)), 500)
        adapter.end()
        buffers = VOLUME_BUFFERS * 4 * int(np.prod(shape))
        proof[count] = {"peak_bytes": tracker.peak_bytes, "volume_buffer_bytes": buffers,
                        "rest_bytes": tracker.peak_bytes - buffers}
    rests = [entry["rest_bytes"] for entry in proof.values()]
    return {"slices": proof, "rest_spread": max(rests) / min(rests) - 1.0, "K": slices, "L": steps}


def ddip_time_per_slice(reconstruction, case, adapted, counts=(1, 2, 4)) -> dict:
    """Seconds of DDIP on the first 1, 2, 4 slices of a case (linear in the number of slices)."""
    times = {}
    for count in counts:
        started = time.perf_counter()
        reconstruction.ddip_slices(case, adapted, 0, slices=list(range(count)))
        times[count] = time.perf_counter() - started
    return times


def _cell(value, digits=2, se=None) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def format_d3ip_table(results: dict, group_names: dict) -> str:
    """The markdown tables of a run: one per group, then the memory proof and DDIP's times."""
    lines = []
    peaks = results["peak_bytes"]
    for group, title in group_names.items():
        rows = [r for r in results["summary"] if r["group"] == group]
        if not rows:
            continue
        lines += [f"**{title}** ({rows[0]['cases']} case(s))", "",
                  "| method | seeds | PSNR (dB) | SSIM | PSNR on the DDIP slices | s / volume | peak MiB (probe) |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            peak = peaks.get(r["method"])
            lines.append(f"| {r['method']} | {r['seeds']} | {_cell(r['psnr'], 2, r['psnr_se'])} | "
                         f"{_cell(r['ssim'], 4)} | {_cell(r['psnr_ddip_slices'])} | {_cell(r['seconds'], 1)} | "
                         f"{_cell(None if peak is None else peak / 2 ** 20, 1)} |")
        lines.append("")
    proof = results["memory_proof"]
    lines.append(f"Adaptation phase (K = {proof['K']}, L = {proof['L']}), peak live tensors minus the volume buffers "
                 f"({VOLUME_BUFFERS} float32 volumes): " + ", ".join(
                     f"N = {n}: {entry['rest_bytes'] / 2 ** 20:.2f} MiB" for n, entry in proof["slices"].items())
                 + f" (spread {100 * proof['rest_spread']:.1f} %).")
    if results.get("ddip_seconds"):
        lines.append("DDIP seconds for 1, 2, 4 slices: " + ", ".join(
            f"{n}: {s:.1f}" for n, s in results["ddip_seconds"].items()) + ".")
    return "\n".join(lines) + "\n"
