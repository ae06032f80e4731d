"""dataset.json: nnU-Net's fields plus tasks; every malformed field names the file, the field and the fix."""
import json
import re

import pytest

from diffens_auto.dataset.dataset_json import (DatasetError, DegradationSpec, KSpaceDegradationSpec, degradation_key,
                                               load_dataset_json)
from diffens_auto.planning.planner import plan_experiment

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


# ---------------------------------------------------------------- a reconstruction task (kspace degradation)

RECON = {"target": "T1", "inputs": [], "degradation": {"type": "kspace", "mask": "poisson", "acceleration": 8}}
FULL_KSPACE = {"type": "kspace", "mask": "uniform1d", "acceleration": 4.5, "acs": 24, "slice_axis": 0,
               "noise_std": 0.01, "mask_per_slice": True}


def with_recon(recon):
    return dict(VALID, tasks={**VALID["tasks"], "recon": recon})


def test_recon_task_fills_the_kspace_defaults_and_has_no_condition(tmp_path):
    task = load_dataset_json(write(tmp_path, with_recon(RECON))).tasks["recon"]
    assert task.degradation == KSpaceDegradationSpec(mask="poisson", acceleration=8.0, acs=12, slice_axis=2,
                                                     noise_std=0.0, mask_per_slice=False)
    assert task.degradation.type == "kspace"
    assert task.inputs == () and task.condition_channels == () and task.channels_needed == (0,)


def test_kspace_degradation_round_trips_through_to_dict(tmp_path):
    task = load_dataset_json(write(tmp_path, with_recon(dict(RECON, degradation=FULL_KSPACE)))).tasks["recon"]
    assert task.degradation.to_dict() == FULL_KSPACE
    again = load_dataset_json(write(tmp_path, with_recon(dict(RECON, degradation=task.degradation.to_dict()))))
    assert again.tasks["recon"].degradation == task.degradation


@pytest.mark.parametrize("degradation, key", [
    (RECON["degradation"], "kspace_poisson_8x_acs12_z"),
    (FULL_KSPACE, "kspace_uniform1d_4.5x_acs24_x_noise0.01_perslice"),
])
def test_kspace_degradation_key_is_the_same_for_spec_and_dict(degradation, key):
    spec = KSpaceDegradationSpec(**{k: v for k, v in degradation.items() if k != "type"})
    assert degradation_key(degradation) == degradation_key(spec) == degradation_key(spec.to_dict()) == key


def test_avgpool_degradation_key_is_unchanged():
    assert degradation_key(DegradationSpec("avgpool", (4, 4, 2))) == "avgpool_4x4x2"


def set_kspace(**values):
    return lambda task: task["degradation"].update(values)


def drop_kspace(key):
    return lambda task: task["degradation"].pop(key)


SCOPE = "multi-coil and complex priors are out of scope"


@pytest.mark.parametrize("mutate, field, problem, fix", [
    (set_kspace(coils=8), "coils", SCOPE, "single-coil, real-valued"),
    (set_kspace(num_coils=8), "num_coils", SCOPE, "single-coil, real-valued"),
    (set_kspace(complex=True), "complex", SCOPE, "single-coil, real-valued"),
    (set_kspace(mask="radial"), "mask", SCOPE, '"poisson"'),
    (set_kspace(mask=["poisson"]), "mask", "unknown mask", '"uniform1d"'),
    (set_kspace(accel=8), "accel", "unknown key", "correct the spelling"),
    (drop_kspace("mask"), "mask", "missing", '"mask": "poisson"'),
    (drop_kspace("acceleration"), "acceleration", "missing", '"acceleration": 8'),
    (set_kspace(acceleration=1), "acceleration", "> 1", '"acceleration": 8'),
    (set_kspace(acceleration=0.5), "acceleration", "> 1", '"acceleration": 8'),
    (set_kspace(acceleration=float("nan")), "acceleration", "finite", '"acceleration": 8'),
    (set_kspace(acceleration=float("inf")), "acceleration", "finite", '"acceleration": 8'),
    (set_kspace(acceleration="8"), "acceleration", "number", '"acceleration": 8'),
    (set_kspace(acceleration=True), "acceleration", "number", '"acceleration": 8'),
    (set_kspace(acs=-1), "acs", "non-negative integer", '"acs": 12'),
    (set_kspace(acs=12.0), "acs", "non-negative integer", '"acs": 12'),
    (set_kspace(acs=True), "acs", "non-negative integer", '"acs": 12'),
    (set_kspace(slice_axis=3), "slice_axis", "0, 1 or 2", "axial"),
    (set_kspace(slice_axis=-1), "slice_axis", "0, 1 or 2", "axial"),
    (set_kspace(slice_axis=2.0), "slice_axis", "0, 1 or 2", "axial"),
    (set_kspace(slice_axis=True), "slice_axis", "0, 1 or 2", "axial"),
    (set_kspace(noise_std=-0.1), "noise_std", ">= 0", '"noise_std": 0.0'),
    (set_kspace(noise_std=float("inf")), "noise_std", "finite", '"noise_std": 0.0'),
    (set_kspace(noise_std="0"), "noise_std", "finite number", '"noise_std": 0.0'),
    (set_kspace(mask_per_slice=1), "mask_per_slice", "true or false", "one mask for every slice"),
    (set_kspace(mask_per_slice="false"), "mask_per_slice", "true or false", "one mask for every slice"),
])
def test_malformed_kspace_fields_name_file_task_field_and_fix(tmp_path, mutate, field, problem, fix):
    recon = json.loads(json.dumps(RECON))
    mutate(recon)
    where = re.escape(f"{tmp_path / 'dataset.json'}: field 'tasks.recon.degradation.{field}': ")
    with pytest.raises(DatasetError, match=f"{where}.*{re.escape(problem)}.*Fix: .*{re.escape(fix)}"):
        load_dataset_json(write(tmp_path, with_recon(recon)))


def test_a_kspace_task_with_inputs_is_refused_naming_the_inputs(tmp_path):
    where = re.escape(f"{tmp_path / 'dataset.json'}: field 'tasks.recon.inputs': ")
    with pytest.raises(DatasetError, match=f"{where}.*takes no inputs.*Fix: " + re.escape('write "inputs": []')):
        load_dataset_json(write(tmp_path, with_recon(dict(RECON, inputs=["T1ce"]))))


@pytest.mark.parametrize("degradation", [RECON["degradation"], FULL_KSPACE])
@pytest.mark.parametrize("as_dict", [False, True])
def test_a_recon_task_reaching_the_planner_plans_as_an_unconditional_prior(tmp_path, as_dict, degradation):
    spec = load_dataset_json(write(tmp_path, with_recon(dict(RECON, degradation=degradation))))
    task = spec.tasks["recon"]
    if as_dict:
        task = {"target": task.target, "inputs": [], "degradation": task.degradation.to_dict()}
    fingerprint = {"spacings": [[1.0, 1.0, 1.0]] * 2, "shapes_after_crop": [[32, 32, 32]] * 2,
                   "foreground_intensity_properties_per_channel": {
                       str(c): {"percentile_00_5": 0.0, "percentile_99_5": 1.0} for c in spec.channel_names}}
    plans = plan_experiment(fingerprint, {"recon": task}, spec.channel_names, "Dataset990_Recon", preset="tiny")
    section = plans["tasks"]["recon"]
    assert section["degradation"] == spec.tasks["recon"].degradation.to_dict()
    assert section["condition_channels"] == [] and section["target_normalization"] == \
        f"degraded:{degradation_key(spec.tasks['recon'].degradation)}"
