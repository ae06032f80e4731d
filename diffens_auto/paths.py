"""The three data folders, read from environment variables when first needed (as nnU-Net does)."""
import os
from pathlib import Path

from diffens_auto.errors import DiffensError

RAW_VARIABLE = "diffens_raw"
PREPROCESSED_VARIABLE = "diffens_preprocessed"
RESULTS_VARIABLE = "diffens_results"
AUGMENTATION_WORKERS_VARIABLE = "diffens_n_proc_DA"   # like nnU-Net's nnUNet_n_proc_DA
DEFAULT_AUGMENTATION_WORKERS = 2
FORCE_AUTOCAST_VARIABLE = "diffens_force_autocast"    # run a bf16 plan's networks in bf16 on CPU / MPS too
COMPILE_VARIABLE = "diffens_compile"                   # torch.compile the networks at prediction (nnUNet_compile)
# what torchrun (torch.distributed.run) sets in each process it starts
DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class PathNotSetError(DiffensError, RuntimeError):
    """Raised when a data folder is needed but its environment variable is not set."""


class EnvironmentSettingError(DiffensError, ValueError):
    """An environment variable of diffens_auto holds a value it cannot use."""


def _folder_from_environment(variable: str, role: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        raise PathNotSetError(
            f"The environment variable '{variable}' is not set, so diffens_auto does not know where the {role} "
            f"lives. Set it, e.g. `export {variable}=/data/diffens/{variable.split('_', 1)[1]}` "
            "(see documentation/setting_up_paths.md)."
        )
    return Path(value).expanduser()


def raw_folder() -> Path:
    """Return the folder holding raw datasets (`diffens_raw`)."""
    return _folder_from_environment(RAW_VARIABLE, "raw data")


def preprocessed_folder() -> Path:
    """Return the folder holding preprocessed datasets and plans (`diffens_preprocessed`)."""
    return _folder_from_environment(PREPROCESSED_VARIABLE, "preprocessed data")


def results_folder() -> Path:
    """Return the folder holding trained models (`diffens_results`)."""
    return _folder_from_environment(RESULTS_VARIABLE, "trained models")


def augmentation_workers() -> int:
    """Data-augmentation worker processes per training process (`diffens_n_proc_DA`, default 2; 0 = in-process)."""
    value = os.environ.get(AUGMENTATION_WORKERS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_AUGMENTATION_WORKERS
    try:
        workers = int(value)
    except ValueError:
        workers = -1
    if workers < 0:
        raise ValueError(f"The environment variable '{AUGMENTATION_WORKERS_VARIABLE}' is {value!r}; it must be a "
                         f"whole number >= 0 (0 runs the data augmentation in the training process), e.g. "
                         f"`export {AUGMENTATION_WORKERS_VARIABLE}=4`.")
    return workers


def distributed_environment() -> dict | None:
    """What a launcher such as torchrun set for this process, or None when WORLD_SIZE is not set.

    Returns {"rank", "world_size", "local_rank", "local_world_size", "master_addr", "master_port"}: whole numbers
    (local_world_size defaults to world_size, local_rank to rank) and the rendezvous address and port as given.
    """
    values = {name: os.environ.get(name, "").strip() for name in DISTRIBUTED_VARIABLES}
    if not values["WORLD_SIZE"]:
        return None
    numbers = {}
    for name, default in (("WORLD_SIZE", None), ("RANK", "0"), ("LOCAL_RANK", values["RANK"] or "0"),
                          ("LOCAL_WORLD_SIZE", values["WORLD_SIZE"])):
        text = values[name] or default
        if not text.isdigit():
            raise ValueError(f"The environment variable '{name}' is {values[name]!r}; a launcher such as torchrun "
                             "sets it to a whole number >= 0. Start data-parallel runs with torchrun (or -num_gpus "
                             "on one machine).")
        numbers[name.lower()] = int(text)
    return {**numbers, "master_addr": values["MASTER_ADDR"] or None, "master_port": values["MASTER_PORT"] or None}


def use_folders(root: str | os.PathLike) -> dict[str, Path]:
    """Point the three variables at `root/raw`, `root/preprocessed`, `root/results` for this process (demo, tests)."""
    root = Path(root)
    folders = {RAW_VARIABLE: root / "raw", PREPROCESSED_VARIABLE: root / "preprocessed", RESULTS_VARIABLE: root / "results"}
    for variable, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(folder)
    return folders


def _switch(variable: str) -> bool:
    """An on/off environment variable: unset, 0, false, no, off -> False; 1, true, t, yes, on -> True."""
    value = os.environ.get(variable, "").strip().lower()
    if value in ("", "0", "false", "f", "no", "off"):
        return False
    if value in ("1", "true", "t", "yes", "on"):
        return True
    raise EnvironmentSettingError(f"The environment variable '{variable}' is {value!r}; use 1 or 0 (e.g. "
                                  f"`export {variable}=1`).")


def force_autocast() -> bool:
    """Whether `diffens_force_autocast` asks for the plans' half precision on CPU / MPS too (default: float32 there)."""
    return _switch(FORCE_AUTOCAST_VARIABLE)


def compile_networks() -> bool:
    """Whether `diffens_compile` asks to torch.compile the networks at prediction (off by default)."""
    return _switch(COMPILE_VARIABLE)
