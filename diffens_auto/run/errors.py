"""How every command reports a user error: one clear message and exit status 1, no traceback."""
import sys
from typing import Callable

from diffens_auto.dataset.dataset_json import DatasetError
from diffens_auto.dataset.naming import DatasetNotFoundError
from diffens_auto.imageio import ImageReadError
from diffens_auto.demo.pipeline import DemoSetupError
from diffens_auto.inference.model import PredictionSetupError
from diffens_auto.model_sharing.export import ModelSharingError
from diffens_auto.paths import PathNotSetError
from diffens_auto.planning import PlanningError, PlansError, UnknownPresetError
from diffens_auto.planning.plans_file import PlansNotFoundError
from diffens_auto.preprocessing.preprocessor import PreprocessingError
from diffens_auto.training.checkpoints import CheckpointError
from diffens_auto.training.experts import ExpertMismatchError
from diffens_auto.training.trainer import TrainingSetupError
from diffens_auto.workers import WorkerDiedError

USER_ERRORS = (DatasetError, DatasetNotFoundError, ImageReadError, PathNotSetError, PlansNotFoundError, PlansError,
               PlanningError, UnknownPresetError, PreprocessingError, WorkerDiedError, FileNotFoundError,
               TrainingSetupError, ExpertMismatchError, CheckpointError, PredictionSetupError,
               ModelSharingError, DemoSetupError)


def run_command(work: Callable[[], None]) -> None:
    """Run a command's work; print user errors as a message on stderr and exit 1."""
    try:
        work()
    except USER_ERRORS as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)
