"""The tasks tests use the training tests' small preprocessed demo dataset."""
from training.conftest import demo_data, plans  # noqa: F401  (tests/ is on the pytest pythonpath)
