"""dataset.json: nnU-Net's fields plus tasks; every malformed field names the file, the field and the fix."""
import json

import pytest

from diffens_auto.dataset.dataset_json import DatasetError, load_dataset_json

VALID = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "FLAIR"},
    "numTraining": 3,
    "file_ending": ".nii.gz",
    "tasks": {
        "sr": {"target": "FLAIR", "inputs": [], "degradation": {"type": "avgpool", "factor": [4, 4, 4]}},
        "mt": {"target": "FLAIR", "inputs": ["T1ce"]},
        "both": {"target": "FLAIR", "inputs": ["T1ce", "T1"], "degradation": {"type": "avgpool", "factor": 2}},
    },
}


def write(tmp_path, content):
    (tmp_path / "dataset.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return tmp_path


def test_valid_dataset_json_parses_tasks_into_channel_indices(tmp_path):
    spec = load_dataset_json(write(tmp_path, VALID))
    assert spec.channel_names == {0: "T1", 1: "T1ce", 2: "FLAIR"}
    assert spec.tasks["sr"].target == 2 and spec.tasks["sr"].inputs == ()
    assert spec.tasks["sr"].condition_channels == (2,)
    assert spec.tasks["mt"].condition_channels == (1,) and spec.tasks["mt"].degradation is None
    assert spec.tasks["both"].condition_channels == (1, 0, 2)
    assert spec.tasks["both"].degradation.factor == (2, 2, 2)


def test_nnunet_dataset_without_tasks_gets_default_sr(tmp_path):
    raw = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "numTraining": 2,
           "file_ending": ".nii.gz"}
    spec = load_dataset_json(write(tmp_path, raw))
    assert list(spec.tasks) == ["sr"]
    assert spec.tasks["sr"].target == 0 and spec.tasks["sr"].degradation.factor == (4, 4, 4)


def test_multichannel_without_tasks_warns_and_defaults_to_channel_0(tmp_path):
    raw = {k: v for k, v in VALID.items() if k != "tasks"}
    with pytest.warns(UserWarning, match="tasks"):
        spec = load_dataset_json(write(tmp_path, raw))
    assert spec.tasks["sr"].target == 0


@pytest.mark.parametrize("mutate, field, fix", [
    (lambda d: d.pop("channel_names"), "channel_names", "channel_names"),
    (lambda d: d.pop("file_ending"), "file_ending", ".nii.gz"),
    (lambda d: d.pop("numTraining"), "numTraining", "number of training cases"),
    (lambda d: d.update(channel_names={"0": "T1", "2": "T2"}), "channel_names", "consecutively"),
    (lambda d: d["tasks"]["mt"].update(target="PD"), "tasks.mt.target", "T1ce"),
    (lambda d: d["tasks"]["mt"].update(inputs=["DWI"]), "tasks.mt.inputs", "channel names"),
    (lambda d: d["tasks"]["sr"]["degradation"].update(type="blur"), "tasks.sr.degradation.type", "avgpool"),
    (lambda d: d["tasks"]["sr"]["degradation"].update(factor=[4, 4]), "tasks.sr.degradation.factor", "[1, 1, 4]"),
    (lambda d: d["tasks"]["mt"].update(inputs=[]), "tasks.mt", "degradation"),
    (lambda d: d["tasks"]["mt"].update(inputs=["FLAIR"]), "tasks.mt.inputs", "degradation"),
])
def test_malformed_fields_name_file_field_and_fix(tmp_path, mutate, field, fix):
    raw = json.loads(json.dumps(VALID))
    mutate(raw)
    with pytest.raises(DatasetError) as err:
        load_dataset_json(write(tmp_path, raw))
    message = str(err.value)
    assert str(tmp_path / "dataset.json") in message
    assert f"'{field}'" in message and "Fix:" in message and fix in message


def test_invalid_json_names_file(tmp_path):
    with pytest.raises(DatasetError, match="not valid JSON") as err:
        load_dataset_json(write(tmp_path, '{"channel_names": {"0": "T1"},'))
    assert "dataset.json" in str(err.value)


def test_missing_dataset_json(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset_json(tmp_path)


@pytest.mark.parametrize("case", ["../escape", "a/b", "..", "/abs", ".hidden"])
def test_explicit_case_names_that_escape_are_refused(tmp_path, case):
    raw = dict(VALID, dataset={case: {"images": ["imagesTr/x_0000.nii.gz"] * 3}})
    with pytest.raises(DatasetError, match="not allowed"):
        load_dataset_json(write(tmp_path, raw))


def test_explicit_image_paths_must_stay_inside_dataset(tmp_path):
    raw = dict(VALID, dataset={"case1": {"images": ["../other/x_0000.nii.gz"] * 3}})
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        load_dataset_json(write(tmp_path, raw))
    raw = dict(VALID, dataset={"case1": {"images": ["imagesTr/case1_000%d.nii.gz" % c for c in range(3)]}})
    spec = load_dataset_json(write(tmp_path, raw))
    assert spec.cases["case1"][2] == tmp_path / "imagesTr" / "case1_0002.nii.gz"
