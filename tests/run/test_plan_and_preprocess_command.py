"""The commands end to end on the demo dataset: files produced, re-runs resume, plans chosen by -p."""
import json
import os
import subprocess
import sys
from pathlib import Path

import blosc2
import numpy as np
import pytest

from diffens_auto import paths
from diffens_auto.planning.plans_file import PlansNotFoundError, find_plans_file


def run(command, *args, env=None):
    """Run an installed diffens_* console script (beside this interpreter), returning the completed process."""
    script = Path(sys.executable).parent / f"diffens_{command}"
    return subprocess.run([str(script) if script.exists() else f"diffens_{command}", *args], capture_output=True,
                          text=True, env=env)


@pytest.fixture
def demo_raw(diffens_folders):
    result = run("make_demo_dataset", "-d", "900", "-n", "5", "--shape", "32", "32", "32", "--spacing", "2", "2", "2")
    assert result.returncode == 0, result.stderr
    return diffens_folders


@pytest.mark.slow
def test_plan_and_preprocess_tiny_produces_everything_and_resumes(demo_raw):
    result = run("plan_and_preprocess", "-d", "900", "-pl", "tiny", "-np", "2", "--verify_dataset_integrity")
    assert result.returncode == 0, result.stderr
    out = demo_raw[paths.PREPROCESSED_VARIABLE] / "Dataset900_DemoBrain"
    for name in ("dataset.json", "dataset_fingerprint.json", "diffensPlans_tiny.json", "splits_final.json"):
        assert (out / name).is_file(), name
    plans = json.loads((out / "diffensPlans_tiny.json").read_text())
    fingerprint = json.loads((out / "dataset_fingerprint.json").read_text())
    assert len(fingerprint["case_identifiers"]) == 5
    assert len(json.loads((out / "splits_final.json").read_text())) == 5
    data_folder = out / plans["data_identifier"]
    cases = sorted(p.stem for p in data_folder.glob("*.json"))
    assert cases == fingerprint["case_identifiers"]
    data = blosc2.open(str(data_folder / f"{cases[0]}.b2nd"))[:]
    assert data.shape[0] == 4 and data.dtype == np.float32 and np.isfinite(data).all()
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"

    stamps = {p: p.stat().st_mtime_ns for p in data_folder.iterdir()}
    (data_folder / f"{cases[1]}.json").unlink()  # as if the run had been killed while writing this case
    result = run("plan_and_preprocess", "-d", "Dataset900_DemoBrain", "-pl", "tiny", "-np", "1")
    assert result.returncode == 0, result.stderr
    changed = sorted(p.name for p in data_folder.iterdir() if p.stat().st_mtime_ns != stamps.get(p))
    assert changed and all(name.startswith(cases[1]) for name in changed), changed


def test_no_pp_stops_after_planning_and_plans_are_found_by_name(demo_raw):
    out = demo_raw[paths.PREPROCESSED_VARIABLE] / "Dataset900_DemoBrain"
    assert run("plan_and_preprocess", "-d", "900", "-pl", "tiny", "--no_pp", "-np", "1").returncode == 0
    assert (out / "diffensPlans_tiny.json").is_file() and not (out / "diffensPlans_tiny").exists()
    assert find_plans_file(out) == out / "diffensPlans_tiny.json"
    result = run("plan_experiment", "-d", "900", "-pl", "default", "-gpu_memory_target", "40")
    assert result.returncode == 0, result.stderr
    with pytest.raises(PlansNotFoundError, match="Several plans.*-p"):
        find_plans_file(out)
    result = run("preprocess", "-d", "900", "-np", "1")
    assert result.returncode == 1 and "diffensPlans" in result.stderr and "-p" in result.stderr
    result = run("preprocess", "-d", "900", "-np", "1", "-p", "diffensPlans_nope")
    assert result.returncode == 1 and "No plans 'diffensPlans_nope'" in result.stderr


def test_unknown_preset_and_missing_variable_are_clear(demo_raw):
    result = run("plan_and_preprocess", "-d", "900", "-pl", "huge", "-np", "1")
    assert result.returncode == 1 and "huge" in result.stderr and "tiny" in result.stderr
    env = {k: v for k, v in os.environ.items() if k != paths.RAW_VARIABLE}
    result = run("plan_and_preprocess", "-d", "900", env=env)
    assert result.returncode == 1 and "'diffens_raw' is not set" in result.stderr
