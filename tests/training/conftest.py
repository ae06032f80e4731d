"""A preprocessed 3-case demo dataset (tiny plans), built once per test session for the training tests."""
import copy
from types import SimpleNamespace

import pytest

from diffens_auto import paths
from diffens_auto.dataset.splits import split_case_ids
from diffens_auto.demo.dataset import make_demo_dataset
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess

PLANS_NAME = "diffensPlans_tiny"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Dataset900_DemoBrain (3 cases of 32^3 at 2 mm) planned with the tiny preset and preprocessed.

    Returns a namespace: dataset_folder, data_folder, plans, train and val (fold 0's case ids).
    """
    root = tmp_path_factory.mktemp("training_demo")
    with pytest.MonkeyPatch.context() as monkeypatch:
        for variable in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
            (root / variable).mkdir()
            monkeypatch.setenv(variable, str(root / variable))
        make_demo_dataset(num_cases=3, shape=(32, 32, 32), spacing=(2, 2, 2))
        plan_and_preprocess(900, preset="tiny", num_processes=1)
    dataset_folder = root / paths.PREPROCESSED_VARIABLE / "Dataset900_DemoBrain"
    plans = load_plans(dataset_folder, PLANS_NAME)
    train, val = split_case_ids(dataset_folder, 0)
    return SimpleNamespace(dataset_folder=dataset_folder, data_folder=dataset_folder / plans["data_identifier"],
                           plans=plans, train=train, val=val)


@pytest.fixture
def plans(demo_data):
    """A copy of the demo plans a test may edit."""
    return copy.deepcopy(demo_data.plans)
