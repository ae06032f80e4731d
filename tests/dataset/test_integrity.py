"""--verify_dataset_integrity and the command on bad input: clear messages naming the file and the fix,
nothing half-written."""
import json
import subprocess
import sys

import numpy as np
import pytest
from synthetic_images import blob, write_sitk

from diffens_auto import paths
from diffens_auto.dataset.dataset_json import DatasetError, load_dataset_json
from diffens_auto.dataset.integrity import verify_dataset_integrity
from diffens_auto.imageio import ImageReadError
from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess


def corrupt_missing_channel(folder):
    f = folder / "imagesTr" / "case1_0001.nii.gz"
    f.unlink()
    return f, "channel 1 missing"


def corrupt_unreadable(folder):
    f = folder / "imagesTr" / "case1_0001.nii.gz"
    f.write_bytes(f.read_bytes()[:100])
    return f, str(f)


def corrupt_2d(folder):
    import SimpleITK as sitk
    f = folder / "imagesTr" / "case1_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6), np.float32)), str(f))
    return f, str(f)


def corrupt_4d(folder):
    import SimpleITK as sitk
    f = folder / "imagesTr" / "case1_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 4, 5, 6), np.float32), isVector=False), str(f))
    return f, str(f)


def corrupt_nan(folder):
    f = folder / "imagesTr" / "case2_0001.nii.gz"
    array = blob((16, 18, 12), 3)
    array[3, 4, 5] = np.nan
    array[3, 4, 6] = np.inf
    write_sitk(array, f, spacing=(1.0, 1.0, 1.5), origin=(5.0, -3.0, 2.0))
    return f, "NaN or infinite"


def corrupt_geometry(folder):
    f = folder / "imagesTr" / "case2_0001.nii.gz"
    write_sitk(blob((16, 18, 12), 3), f, spacing=(1.0, 1.0, 1.5), origin=(5.0, -3.0, 2.5))
    return f, "differ in geometry"


def corrupt_empty(folder):
    f = folder / "imagesTr" / "case3_0000.nii.gz"
    write_sitk(np.zeros((16, 18, 12), np.float32), f, spacing=(1.0, 1.0, 1.5), origin=(5.0, -3.0, 2.0))
    return f, "empty (all voxels are 0)"


CORRUPTIONS = [corrupt_missing_channel, corrupt_unreadable, corrupt_2d, corrupt_4d, corrupt_nan, corrupt_geometry,
               corrupt_empty]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_integrity_check_names_the_file_and_the_fix(small_raw_dataset, corrupt):
    bad_file, expected = corrupt(small_raw_dataset)
    with pytest.raises(DatasetError) as err:
        verify_dataset_integrity(load_dataset_json(small_raw_dataset), num_processes=1)
    message = str(err.value)
    assert expected in message and bad_file.name in message and "Fix" in message


def test_clean_dataset_passes(small_raw_dataset):
    verify_dataset_integrity(load_dataset_json(small_raw_dataset), num_processes=2)


def test_num_training_mismatch(small_raw_dataset):
    spec_file = small_raw_dataset / "dataset.json"
    spec_file.write_text(spec_file.read_text().replace('"numTraining": 4', '"numTraining": 5'))
    with pytest.raises(DatasetError, match="numTraining is 5 but 4"):
        verify_dataset_integrity(load_dataset_json(small_raw_dataset), num_processes=1)


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no_verify"])
def test_plan_and_preprocess_stops_on_bad_input_and_writes_nothing(small_raw_dataset, diffens_folders, corrupt,
                                                                   verify):
    bad_file, _ = corrupt(small_raw_dataset)
    with pytest.raises((DatasetError, ImageReadError)) as err:
        plan_and_preprocess(42, preset="tiny", num_processes=1, verify_integrity=verify)
    assert bad_file.name in str(err.value) and "Fix" in str(err.value)
    out = diffens_folders[paths.PREPROCESSED_VARIABLE] / "Dataset042_Small"
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert left in ([], ["dataset.json"]), left


def test_command_prints_clear_error_and_exits_1(small_raw_dataset):
    (small_raw_dataset / "dataset.json").write_text('{"channel_names": ')
    result = subprocess.run([sys.executable, "-m", "diffens_auto.run.plan_and_preprocess", "-d", "42", "-pl", "tiny"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "dataset.json" in result.stderr and "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
