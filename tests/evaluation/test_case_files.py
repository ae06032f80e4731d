"""Pairing references with predictions, uncertainty maps and masks by file name."""
import pytest

from diffens_auto.evaluation.case_files import detect_file_ending, pair_case_files


def touch(folder, *names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_plain_and_single_channel_references_pair_with_case_named_predictions(tmp_path):
    touch(tmp_path / "ref", "a.nii.gz", "b_0000.nii.gz", "dataset.json", ".hidden.nii.gz")
    touch(tmp_path / "pred", "a.nii.gz", "a_std.nii.gz", "b.nii.gz", "zz.nii.gz", "evaluation.json")
    cases, extra = pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz")
    assert [(c.case, c.reference.name, c.prediction.name, c.problem) for c in cases] == [
        ("a", "a.nii.gz", "a.nii.gz", None), ("b", "b_0000.nii.gz", "b.nii.gz", None)]
    assert cases[0].std.name == "a_std.nii.gz" and cases[1].std is None
    assert [f.name for f in extra] == ["zz.nii.gz"]          # a_std is an uncertainty map, not a prediction


def test_several_channels_need_ref_channel(tmp_path):
    touch(tmp_path / "ref", "a_0000.nii.gz", "a_0001.nii.gz")
    touch(tmp_path / "pred", "a.nii.gz")
    (case,), _ = pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz")
    assert case.case == "a" and "-ref_channel" in case.problem and "a_0001.nii.gz" in case.problem
    (case,), _ = pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz", ref_channel=1)
    assert case.reference.name == "a_0001.nii.gz" and case.problem is None
    with pytest.raises(FileNotFoundError, match="CASE_0002"):
        pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz", ref_channel=2)


def test_missing_prediction_mask_and_std_folder(tmp_path):
    touch(tmp_path / "ref", "a.nii.gz", "b.nii.gz")
    touch(tmp_path / "pred", "a.nii.gz", "b.nii.gz")
    touch(tmp_path / "std", "b_std.nii.gz")
    touch(tmp_path / "masks", "a.nii.gz")
    (tmp_path / "pred" / "b.nii.gz").unlink()
    cases, _ = pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz", mask_folder=tmp_path / "masks",
                               std_folder=tmp_path / "std")
    assert cases[0].problem is None and cases[0].mask.name == "a.nii.gz" and cases[0].std is None
    assert "no prediction" in cases[1].problem and str(tmp_path / "pred" / "b.nii.gz") in cases[1].problem
    assert cases[1].std.name == "b_std.nii.gz"
    touch(tmp_path / "pred", "b.nii.gz")
    cases, _ = pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz", mask_folder=tmp_path / "masks")
    assert "no mask" in cases[1].problem
    with pytest.raises(FileNotFoundError, match="mask folder"):
        pair_case_files(tmp_path / "ref", tmp_path / "pred", ".nii.gz", mask_folder=tmp_path / "nope")


def test_file_ending_is_the_most_common_image_ending(tmp_path):
    touch(tmp_path / "ref", "a.mha", "b.mha", "c.nii.gz", "notes.txt", "x.json", "y.csv")
    assert detect_file_ending(tmp_path / "ref") == ".mha"
    touch(tmp_path / "ref", "d.nii.gz")
    assert detect_file_ending(tmp_path / "ref") == ".nii.gz"       # a tie goes to .nii.gz
    touch(tmp_path / "empty", "readme.md")
    with pytest.raises(FileNotFoundError, match="no reference images"):
        detect_file_ending(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="reference folder"):
        detect_file_ending(tmp_path / "missing")
