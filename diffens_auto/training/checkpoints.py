"""Training checkpoints: what they hold, atomic writes, weights_only loading, RNG states and file hashes.

A checkpoint is a dict of tensors and plain Python types only, so `torch.load(path, weights_only=True)` loads it
(no pickled classes). Files in a fold folder:

    checkpoint_latest.pth   every `checkpoint_every` epochs (resume point; removed once final exists)
    checkpoint_best.pth     the state with the lowest validation loss so far
    checkpoint_final.pth    the state after the last epoch (what prediction and the ensembler use)

Keys (see documentation/training.md): format_version, kind ("expert" | "ensembler"), dataset_name, plans_name,
task, configuration (the name it is saved under), base_configuration (the plans configuration of its topology),
fold, network (the plans network dict the model is built from), parametrization, task_plans, slice_axis
(experts), experts (ensembler: one record per frozen expert with its checkpoint's SHA-256), ensembler_lambda,
model (trained weights), ema ({decay, num_updates, weights}: the weights used for validation and inference),
optimizer, epoch (epochs completed), iteration, best_val_loss, progress (per-epoch curves), rng, seed,
world_size, num_epochs, iterations_per_epoch.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from diffens_auto.atomic import atomic_path

FORMAT_VERSION = 1
LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing, unreadable or does not belong to the run that wants it."""


# ------------------------------------------------------------------ files


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically (a reader sees the old file or the complete new one)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True (tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(f"{path} is not a readable diffens_auto checkpoint ({type(e).__name__}: {e}). "
                              "Fix: delete it and train again (or resume from another checkpoint).") from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (the ensembler records its experts' checkpoint hashes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resume_checkpoint(fold_folder: str | Path) -> Path | None:
    """The checkpoint a `--c` run resumes from: the one of final and latest with more epochs done, or None."""
    candidates = [Path(fold_folder) / name for name in (FINAL, LATEST)]
    found = [(int(load_checkpoint(p)["epoch"]), i, p) for i, p in enumerate(candidates) if p.is_file()]
    if not found:
        return None
    # most epochs first; on a tie final (index 0) wins
    return max(found, key=lambda item: (item[0], -item[1]))[2]


# ------------------------------------------------------------------ random number generators


def rng_state() -> dict:
    """Every global RNG state as tensors and plain types: torch CPU/CUDA, numpy, python `random`."""
    version, mt_state, gauss_next = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(version), "state": torch.tensor(mt_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA states only where this machine has as many devices)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python `random` (model initialisation, dropout, augmentation)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


# ------------------------------------------------------------------ models from checkpoints


def model_from_checkpoint(checkpoint: dict, weights: str = "ema", device="cpu") -> torch.nn.Module:
    """The expert or ensembler a checkpoint describes, with its EMA (default) or trained weights, in eval mode."""
    from diffens_auto.networks import Ensembler, build_expert

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}.")
    if checkpoint["kind"] == "expert":
        model = build_expert(checkpoint["network"])
    else:
        names = [e["name"] for e in checkpoint["experts"]]
        model = Ensembler(checkpoint["network"], names, [e["parametrization"] for e in checkpoint["experts"]],
                          checkpoint["ensembler_lambda"])
    state = checkpoint["ema"]["weights"] if weights == "ema" else checkpoint["model"]
    model.load_state_dict(state)
    return model.to(device).eval()
