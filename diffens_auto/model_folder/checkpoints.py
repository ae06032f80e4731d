"""The checkpoint format of a trained model: what a file holds, atomic writes, weights_only loading, the model.

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

from pathlib import Path

import torch

import diffens_auto
from diffens_auto.atomic import atomic_path
from diffens_auto.errors import DiffensError
from diffens_auto.networks import Ensembler, build_expert

FORMAT_VERSION = 1
LATEST, BEST, FINAL = "checkpoint_latest.pth", "checkpoint_best.pth", "checkpoint_final.pth"


class CheckpointError(DiffensError, FileNotFoundError):
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
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(f"{path} is not a readable diffens_auto checkpoint ({type(e).__name__}: {e}). "
                              "Fix: delete it and train again (or resume from another checkpoint).") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version!r}; this diffens_auto "
                              f"({diffens_auto.__version__}) reads formats up to {FORMAT_VERSION}. Fix: update "
                              "diffens_auto to the version that wrote it, or train the model again.")
    return state


def resume_checkpoint(fold_folder: str | Path) -> Path | None:
    """The checkpoint a `--c` run resumes from: the one of final and latest with more epochs done, or None."""
    candidates = [Path(fold_folder) / name for name in (FINAL, LATEST)]
    found = [(int(load_checkpoint(p)["epoch"]), i, p) for i, p in enumerate(candidates) if p.is_file()]
    if not found:
        return None
    # most epochs first; on a tie final (index 0) wins
    return max(found, key=lambda item: (item[0], -item[1]))[2]


# ------------------------------------------------------------------ models from checkpoints


def model_from_checkpoint(checkpoint: dict, weights: str = "ema", device="cpu") -> torch.nn.Module:
    """The expert or ensembler a checkpoint describes, with its EMA (default) or trained weights, in eval mode."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}.")
    if checkpoint["kind"] == "expert":
        model = build_expert(checkpoint["network"])
    else:
        names = [e["name"] for e in checkpoint["experts"]]
        # experts of another task's space run converted into the ensembler's: it fuses its own task's quantity
        fused = checkpoint.get("parametrization")
        parametrizations = [fused] * len(names) if fused else [e["parametrization"] for e in checkpoint["experts"]]
        model = Ensembler(checkpoint["network"], names, parametrizations, checkpoint["ensembler_lambda"])
    state = checkpoint["ema"]["weights"] if weights == "ema" else checkpoint["model"]
    model.load_state_dict(state)
    return model.to(device).eval()
