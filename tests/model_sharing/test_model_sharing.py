"""Export trained models to a zip and install it elsewhere: byte-identical files, experts kept, bad zips refused.

The trained demo's folders are shared by the whole session: tests that tamper with a results tree copy it first.
"""
import json
import shutil
import sys
import zipfile

import pytest

import diffens_auto
from diffens_auto import paths
from diffens_auto.hashing import file_sha256
from diffens_auto.model_folder.checkpoints import FINAL, load_checkpoint
from diffens_auto.model_sharing import MANIFEST_FILE, ModelSharingError, export_model_to_zip, install_model_from_zip

ENSEMBLER = "sr/3d_ensembler__diffensPlans_tiny/fold_0/checkpoint_final.pth"
EXPERTS = ("sr/2d_axial__diffensPlans_tiny/fold_0/checkpoint_final.pth",
           "sr/2d_sagittal__diffensPlans_tiny/fold_0/checkpoint_final.pth")


@pytest.fixture(scope="module")
def exported(trained_demo, tmp_path_factory):
    """The whole trained demo (default selection) exported once for this module: (zip path, manifest)."""
    zip_file = tmp_path_factory.mktemp("export") / "demo.zip"
    with pytest.MonkeyPatch.context() as monkeypatch:
        for variable, folder in trained_demo.folders.items():
            monkeypatch.setenv(variable, str(folder))
        export_model_to_zip(900, zip_file)
    with zipfile.ZipFile(zip_file) as archive:
        manifest = json.loads(archive.read(f"{trained_demo.dataset_name}/{MANIFEST_FILE}"))
    return zip_file, manifest


@pytest.fixture
def fresh_results(tmp_path, monkeypatch):
    """An empty diffens_results to install into."""
    folder = tmp_path / "installed"
    folder.mkdir()
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(folder))
    return folder


def _rewrite_zip(source, target, change):
    """Copy a zip member by member, passing each (name, bytes) through `change` (None drops the member)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = change(name, old.read(name))
            if data is not None:
                new.writestr(name, data)


def test_export_holds_every_trained_model_with_a_manifest(trained_demo, exported):
    zip_file, manifest = exported
    name = trained_demo.dataset_name
    with zipfile.ZipFile(zip_file) as archive:
        members = set(archive.namelist())
    for model in ("sr/2d_axial", "sr/2d_sagittal", "sr/3d_ensembler", "mt/2d_axial"):
        folder = f"{name}/{model}__diffensPlans_tiny"
        for file in ("plans.json", "dataset.json", "dataset_fingerprint.json", f"fold_0/{FINAL}",
                     "fold_0/progress.png"):
            assert f"{folder}/{file}" in members, (folder, file)
        assert any(m.startswith(f"{folder}/fold_0/training_log_") for m in members)
    assert not any("checkpoint_best" in m or "previous_run" in m for m in members)
    assert manifest["diffens_auto_version"] == diffens_auto.__version__ and manifest["dataset_name"] == name
    assert {f["path"] for f in manifest["files"]} == members - {f"{name}/{MANIFEST_FILE}"}
    for entry in manifest["files"]:
        assert entry["sha256"] == file_sha256(trained_demo.results / entry["path"]), entry["path"]
    assert sorted(e["checkpoint"] for e in manifest["experts"]) == sorted(EXPERTS)


def test_install_gives_byte_identical_files_and_matching_expert_records(trained_demo, exported, fresh_results):
    zip_file, manifest = exported
    installed = install_model_from_zip(zip_file)
    assert sorted(installed) == sorted(fresh_results / f["path"] for f in manifest["files"])
    for entry in manifest["files"]:
        assert file_sha256(fresh_results / entry["path"]) == file_sha256(trained_demo.results / entry["path"])
    dataset_results = fresh_results / trained_demo.dataset_name
    for record in load_checkpoint(dataset_results / ENSEMBLER)["experts"]:
        assert file_sha256(dataset_results / record["checkpoint"]) == record["sha256"], record["name"]
    assert not (dataset_results / MANIFEST_FILE).exists()
    assert not [p for p in fresh_results.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    assert install_model_from_zip(zip_file) == installed   # installing again changes nothing


def test_an_ensembler_alone_brings_its_exact_experts(trained_demo_folders, tmp_path, monkeypatch):
    name = trained_demo_folders.dataset_name
    zip_file = export_model_to_zip(name, tmp_path / "ens.zip", configurations=["3d_ensembler"])
    with zipfile.ZipFile(zip_file) as archive:
        members = set(archive.namelist())
    assert {f"{name}/{ENSEMBLER}", *(f"{name}/{e}" for e in EXPERTS)} <= members
    assert f"{name}/sr/2d_axial__diffensPlans_tiny/plans.json" in members
    assert not any("/mt/" in m for m in members)
    installed = tmp_path / "installed"
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(installed))
    install_model_from_zip(zip_file)
    for record in load_checkpoint(installed / name / ENSEMBLER)["experts"]:
        assert file_sha256(installed / name / record["checkpoint"]) == record["sha256"]


@pytest.mark.parametrize("bad_path", ["../../evil.txt", "/tmp/evil.txt", "Dataset900_DemoBrain/../../evil.txt"])
def test_unsafe_member_paths_are_refused(tmp_path, fresh_results, bad_path):
    zip_file = tmp_path / "unsafe.zip"
    manifest = {"dataset_name": "Dataset900_DemoBrain", "files": [{"path": bad_path, "size": 4, "sha256": "0"}]}
    with zipfile.ZipFile(zip_file, "w") as archive:
        archive.writestr(f"Dataset900_DemoBrain/{MANIFEST_FILE}", json.dumps(manifest))
        archive.writestr(bad_path, b"evil")
    with pytest.raises(ModelSharingError, match="unsafe path"):
        install_model_from_zip(zip_file)
    assert not list(tmp_path.rglob("evil.txt")) and not list(fresh_results.iterdir())


def test_a_tampered_file_is_refused_and_nothing_installed(exported, tmp_path, fresh_results):
    zip_file, _ = exported
    tampered = tmp_path / "tampered.zip"

    def flip_a_byte(name, data):
        return bytes([data[0] ^ 1]) + data[1:] if name.endswith("3d_ensembler__diffensPlans_tiny/plans.json") else data
    _rewrite_zip(zip_file, tampered, flip_a_byte)
    with pytest.raises(ModelSharingError, match="plans.json does not match the manifest's SHA-256"):
        install_model_from_zip(tampered)
    assert not [p for p in fresh_results.rglob("*") if p.is_file()]
    unlisted = tmp_path / "unlisted.zip"
    _rewrite_zip(zip_file, unlisted, lambda name, data: data)
    with zipfile.ZipFile(unlisted, "a") as archive:
        archive.writestr("Dataset900_DemoBrain/extra.txt", b"not in the manifest")
    with pytest.raises(ModelSharingError, match="does not match its manifest"):
        install_model_from_zip(unlisted)


def test_an_existing_different_file_is_refused_unless_overwrite(exported, fresh_results):
    zip_file, manifest = exported
    install_model_from_zip(zip_file)
    entry = next(f for f in manifest["files"] if f["path"].endswith("mt/2d_axial__diffensPlans_tiny/plans.json"))
    target = fresh_results / entry["path"]
    target.write_text("{}")
    with pytest.raises(ModelSharingError, match="--overwrite") as refused:
        install_model_from_zip(zip_file)
    assert str(target) in str(refused.value) and target.read_text() == "{}"
    install_model_from_zip(zip_file, overwrite=True)
    assert file_sha256(target) == entry["sha256"]


@pytest.fixture
def results_copy(trained_demo_folders, tmp_path, monkeypatch):
    """A private copy of the trained demo's results, which diffens_results now points at (safe to tamper with)."""
    copy = tmp_path / "results_copy"
    shutil.copytree(trained_demo_folders.results, copy)
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(copy))
    return copy / trained_demo_folders.dataset_name


def test_export_refuses_a_changed_or_missing_expert(results_copy, tmp_path):
    expert = results_copy / EXPERTS[1]
    with open(expert, "ab") as f:
        f.write(b"retrained")
    with pytest.raises(ModelSharingError, match=r"expert 2d_sagittal .*has changed.*retrain the ensembler"):
        export_model_to_zip(900, tmp_path / "changed.zip", configurations=["3d_ensembler"])
    expert.unlink()
    with pytest.raises(ModelSharingError, match=r"expert 2d_sagittal .*missing.*restore"):
        export_model_to_zip(900, tmp_path / "missing.zip", configurations=["3d_ensembler"])
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".*.zip"))
    # the experts themselves (and mt) still export: only the ensembler depends on the missing file
    export_model_to_zip(900, tmp_path / "experts.zip", configurations=["2d_axial"])


def test_export_selection_errors(trained_demo_folders, tmp_path):
    with pytest.raises(ModelSharingError, match="-c 2d_coronal"):
        export_model_to_zip(900, tmp_path / "a.zip", configurations=["2d_coronal"])
    with pytest.raises(ModelSharingError, match="missing.*fold_1"):
        export_model_to_zip(900, tmp_path / "b.zip", configurations=["2d_axial"], folds=[1])
    with pytest.raises(ModelSharingError, match="Nothing to export"):
        export_model_to_zip(900, tmp_path / "c.zip", checkpoints=["checkpoint_latest.pth"])


def test_commands_report_errors_with_exit_status_1(tmp_path, fresh_results, monkeypatch, capsys):
    from diffens_auto.run.model_sharing import install_model_entry
    not_a_zip = tmp_path / "model.zip"
    not_a_zip.write_text("hello")
    monkeypatch.setattr(sys, "argv", ["diffens_install_pretrained_model_from_zip", str(not_a_zip)])
    with pytest.raises(SystemExit) as stopped:
        install_model_entry()
    assert stopped.value.code == 1 and "not a zip file" in capsys.readouterr().err


def test_module_entry_installs(exported, fresh_results, monkeypatch, capsys):
    from diffens_auto.run.model_sharing import _main
    zip_file, manifest = exported
    monkeypatch.setattr(sys, "argv", ["model_sharing", "install", str(zip_file)])
    _main()
    assert f"Installed {len(manifest['files'])} files" in capsys.readouterr().out


def test_an_installed_model_predicts_what_the_original_predicted(trained_demo, exported, fresh_results, tmp_path,
                                                                 monkeypatch):
    """Export, install under a fresh diffens_results with no raw or preprocessed folder, predict: same output."""
    import numpy as np

    from diffens_auto.imageio import read_image, write_image
    from diffens_auto.inference.predictor import DiffensPredictor
    from diffens_auto.operators import degrade_image

    source = trained_demo.raw / trained_demo.dataset_name / "imagesTr" / "DemoBrain_001_0003.nii.gz"
    array, props = read_image(source)
    write_image(*degrade_image(array, props, {"type": "avgpool", "factor": [4, 4, 4]}),
                tmp_path / "in" / "DemoBrain_001_0003.nii.gz")

    def predict(output):
        predictor = DiffensPredictor(steps=3, seed=11, progress=False)
        predictor.initialize_from_trained_model(900, "sr", "3d_ensembler").predict_from_files(tmp_path / "in", output)
        return read_image(output / "DemoBrain_001.nii.gz")

    with monkeypatch.context() as original:
        for variable, folder in trained_demo.folders.items():
            original.setenv(variable, str(folder))
        before, before_props = predict(tmp_path / "before")
    install_model_from_zip(exported[0])
    monkeypatch.delenv(paths.RAW_VARIABLE, raising=False)
    monkeypatch.delenv(paths.PREPROCESSED_VARIABLE, raising=False)
    after, after_props = predict(tmp_path / "after")
    assert np.array_equal(before, after)
    assert before_props["origin"] == after_props["origin"] and before_props["spacing"] == after_props["spacing"]
