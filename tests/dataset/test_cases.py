"""Case discovery with nnU-Net naming and the dataset's file_ending."""
import pytest

from diffens_auto.dataset.cases import discover_cases
from diffens_auto.dataset.dataset_json import DatasetError


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def test_groups_channels_and_honours_file_ending(tmp_path):
    touch(tmp_path, "a_0000.mha", "a_0001.mha", "b_0000.mha", "b_0001.mha", "b_0000.nii.gz", ".hidden_0000.mha")
    cases = discover_cases(tmp_path, ".mha", 2)
    assert sorted(cases) == ["a", "b"]
    assert [p.name for p in cases["b"]] == ["b_0000.mha", "b_0001.mha"]


def test_missing_channel_names_case_and_expected_file(tmp_path):
    touch(tmp_path, "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz")
    with pytest.raises(DatasetError) as err:
        discover_cases(tmp_path, ".nii.gz", 2)
    assert "case b: channel 1 missing" in str(err.value) and "b_0001.nii.gz" in str(err.value)


def test_only_required_channels_needed(tmp_path):
    touch(tmp_path, "a_0001.nii.gz")
    cases = discover_cases(tmp_path, ".nii.gz", 2, required_channels=(1,))
    assert cases["a"][0] is None and cases["a"][1].name == "a_0001.nii.gz"


def test_badly_named_file_and_unknown_channel(tmp_path):
    touch(tmp_path, "scan.nii.gz")
    with pytest.raises(DatasetError, match="CASE_XXXX"):
        discover_cases(tmp_path, ".nii.gz", 1)
    touch(tmp_path / "other", "a_0003.nii.gz")
    with pytest.raises(DatasetError, match="channel 3 does not exist"):
        discover_cases(tmp_path / "other", ".nii.gz", 1)
