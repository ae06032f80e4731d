"""The training stage's user error."""
from diffens_auto.errors import DiffensError


class TrainingSetupError(DiffensError, ValueError):
    """A training request that cannot run as given (unknown configuration, fold, device ...)."""
