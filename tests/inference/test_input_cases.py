"""Which files of an input folder make which case, and what is reported about the files that fit no case."""
from pathlib import Path

from diffens_auto.dataset.dataset_json import DatasetSpec
from diffens_auto.inference.input_cases import find_input_cases, split_into_parts

SPEC = DatasetSpec(Path("/nowhere"), "Demo", {0: "T1", 1: "T1ce", 2: "T2", 3: "FLAIR"}, ".nii.gz", 1, None, {})


def _folder(tmp_path, names):
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".hidden_0003.nii.gz.tmp.nii.gz").write_bytes(b"")   # an atomic write in progress
    return tmp_path


def _cases(folder, channels):
    return {c.case_id: (sorted(c.files), c.problem) for c in find_input_cases(folder, SPEC, channels)}


def test_any_file_is_a_case_of_a_one_channel_task(tmp_path):
    cases = _cases(_folder(tmp_path, ["scan.nii.gz", "brain.nii.gz", "notes.txt"]), [3])
    assert cases == {"brain": ([3], None), "scan": ([3], None)}


def test_nnunet_names_use_the_needed_channel_and_report_cases_without_it(tmp_path):
    names = ["p1_0000.nii.gz", "p1_0001.nii.gz", "p1_0002.nii.gz", "p2_0003.nii.gz", "p2_0000.nii.gz"]
    cases = _cases(_folder(tmp_path, names), [3])
    assert cases["p2"] == ([3], None)
    assert cases["p1"][0] == [] and "channel 3 (FLAIR): p1_0003.nii.gz" in cases["p1"][1]


def test_a_stray_file_is_reported_under_its_own_name_and_does_not_fail_the_case_it_resembles(tmp_path):
    cases = _cases(_folder(tmp_path, ["a.nii.gz", "a_0003.nii.gz", "scan_2019.nii.gz"]), [3])
    assert cases["a"] == ([3], None)
    assert "a.nii.gz does not follow CASE_XXXX.nii.gz" in cases["a.nii.gz"][1]
    assert "dataset's channels [0, 1, 2, 3]" in cases["scan_2019.nii.gz"][1]


def test_a_two_channel_task_needs_both_files(tmp_path):
    cases = _cases(_folder(tmp_path, ["x_0001.nii.gz", "x_0003.nii.gz", "y_0003.nii.gz"]), [1, 3])
    assert cases["x"] == ([1, 3], None)
    assert "channel 1 (T1ce): y_0001.nii.gz" in cases["y"][1]


def test_parts_cover_the_cases_once():
    cases = list(range(7))
    parts = [split_into_parts(cases, 3, i) for i in range(3)]
    assert sorted(sum(parts, [])) == cases
