"""Where a trained model lives: diffens_results/DatasetXXX_Name/TASK/CONFIG__PLANS/fold_F, built and parsed here only.

    DatasetXXX_Name/                      the dataset's results folder (`dataset_results`)
        TASK/CONFIG__PLANS/               the model folder: plans.json, dataset.json, dataset_fingerprint.json
            fold_F/                       checkpoints, training logs, progress.png, validation/
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from diffens_auto.errors import DiffensError

FOLD_PREFIX = "fold_"
PLANS_SEPARATOR = "__"


class ModelFolderError(DiffensError, ValueError):
    """A path or fold that does not name a model folder; the message shows the layout and the fix."""


def parse_fold(fold) -> int | str:
    """0, "0" -> 0; "all" -> "all" (train on every case, validate on every case, as nnU-Net)."""
    if str(fold) == "all":
        return "all"
    try:
        return int(fold)
    except (TypeError, ValueError):
        raise ModelFolderError(f"-f {fold!r}: give a fold number (0, 1, ...) or 'all'.") from None


@dataclass(frozen=True)
class ModelLocation:
    """One trained configuration's place in a results tree: dataset folder, task, configuration, plans and fold."""

    dataset_results: Path
    task: str
    configuration: str
    plans_name: str
    fold: int | str = 0

    @property
    def dataset_name(self) -> str:
        """DatasetXXX_Name."""
        return self.dataset_results.name

    @property
    def model_folder(self) -> Path:
        """DatasetXXX/TASK/CONFIG__PLANS (the json files the model was trained with)."""
        return self.dataset_results / self.task / f"{self.configuration}{PLANS_SEPARATOR}{self.plans_name}"

    @property
    def fold_folder(self) -> Path:
        """DatasetXXX/TASK/CONFIG__PLANS/fold_F (checkpoints, logs, validation)."""
        return self.model_folder / f"{FOLD_PREFIX}{self.fold}"

    def checkpoint(self, name: str) -> Path:
        """A checkpoint file of the fold (checkpoint_final.pth, ...)."""
        return self.fold_folder / name

    def with_configuration(self, configuration: str, task: str | None = None) -> "ModelLocation":
        """The same dataset, plans and fold for another configuration (and task)."""
        return replace(self, configuration=configuration, task=task or self.task)

    def relative(self, path: Path) -> str:
        """`path` relative to the dataset's results folder, as the POSIX text checkpoints record."""
        return Path(path).relative_to(self.dataset_results).as_posix()

    @classmethod
    def parse(cls, path: str | Path, fold=None) -> "ModelLocation":
        """The location of a DatasetXXX/TASK/CONFIG__PLANS folder (or one of its fold_F folders) anywhere on disk."""
        folder = Path(path).resolve()
        if folder.name.startswith(FOLD_PREFIX):
            fold = folder.name[len(FOLD_PREFIX):] if fold is None else fold
            folder = folder.parent
        configuration, sep, plans_name = folder.name.partition(PLANS_SEPARATOR)
        if not sep or not folder.parent.parent.name.startswith("Dataset"):
            raise ModelFolderError(f"{path}: not a model folder. Fix: give .../DatasetXXX_Name/TASK/CONFIG__PLANS "
                                   "(e.g. Dataset900_DemoBrain/sr/3d_ensembler__diffensPlans).")
        return cls(folder.parent.parent, folder.parent.name, configuration, plans_name,
                   parse_fold(0 if fold is None else fold))


def recorded_location(dataset_results: Path, relative: str) -> ModelLocation:
    """The location of a checkpoint recorded as TASK/CONFIG__PLANS/fold_F/FILE relative to `dataset_results`."""
    parts = PurePosixPath(relative).parts
    configuration, sep, plans_name = parts[1].partition(PLANS_SEPARATOR) if len(parts) == 4 else ("", "", "")
    if not sep or not parts[2].startswith(FOLD_PREFIX):
        raise ModelFolderError(f"{relative}: not a checkpoint path TASK/CONFIG__PLANS/fold_F/FILE. Fix: retrain the "
                               "model that records it.")
    return ModelLocation(Path(dataset_results), parts[0], configuration, plans_name,
                         parse_fold(parts[2][len(FOLD_PREFIX):]))


def trained_fold_folders(dataset_results: Path, checkpoint: str) -> list[Path]:
    """Every fold folder under a dataset's results folder that holds `checkpoint`, sorted."""
    return sorted(fold for location in model_folders(dataset_results)
                  for fold in location.model_folder.glob(f"{FOLD_PREFIX}*") if (fold / checkpoint).is_file())


def model_folders(dataset_results: Path, task: str | None = None) -> list[ModelLocation]:
    """Every TASK/CONFIG__PLANS folder under a dataset's results folder (fold 0), sorted by task and name."""
    found = []
    if not Path(dataset_results).is_dir():
        return found
    for task_folder in sorted(p for p in Path(dataset_results).iterdir() if p.is_dir()):
        if task is not None and task_folder.name != task:
            continue
        for folder in sorted(p for p in task_folder.iterdir() if p.is_dir() and PLANS_SEPARATOR in p.name):
            configuration, _, plans_name = folder.name.partition(PLANS_SEPARATOR)
            found.append(ModelLocation(Path(dataset_results), task_folder.name, configuration, plans_name))
    return found


def plans_names_in_results(dataset_results: Path, task: str) -> list[str]:
    """Plans names that have a trained configuration of `task` (CONFIG__PLANS folders)."""
    return sorted({location.plans_name for location in model_folders(dataset_results, task)})
