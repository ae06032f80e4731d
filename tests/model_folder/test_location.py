"""ModelLocation: the results-folder layout built and parsed in one place."""
import pytest

from diffens_auto.model_folder.location import (ModelFolderError, ModelLocation, model_folders, parse_fold,
                                                plans_names_in_results, recorded_location, trained_fold_folders)


def test_a_location_names_the_nnunet_style_folders(tmp_path):
    location = ModelLocation(tmp_path / "Dataset501_Brain", "sr", "3d_ensembler", "diffensPlans", 0)
    assert location.model_folder == tmp_path / "Dataset501_Brain" / "sr" / "3d_ensembler__diffensPlans"
    assert location.fold_folder == location.model_folder / "fold_0"
    assert location.checkpoint("checkpoint_final.pth") == location.fold_folder / "checkpoint_final.pth"
    assert location.dataset_name == "Dataset501_Brain"
    other = location.with_configuration("2d_axial", task="mt")
    assert other.fold_folder == tmp_path / "Dataset501_Brain" / "mt" / "2d_axial__diffensPlans" / "fold_0"
    assert location.relative(location.checkpoint("x.pth")) == "sr/3d_ensembler__diffensPlans/fold_0/x.pth"


@pytest.mark.parametrize("fold", [0, 3, "all"])
def test_parse_inverts_the_layout_from_the_model_or_the_fold_folder(tmp_path, fold):
    location = ModelLocation((tmp_path / "Dataset501_Brain").resolve(), "both", "3d_fusion", "diffensPlans_tiny",
                             fold)
    assert ModelLocation.parse(location.fold_folder) == location
    assert ModelLocation.parse(location.model_folder, fold) == location


def test_parse_refuses_a_folder_that_is_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="not a model folder.*CONFIG__PLANS"):
        ModelLocation.parse(tmp_path / "Dataset501_Brain" / "sr")
    with pytest.raises(ModelFolderError, match="not a model folder"):
        ModelLocation.parse(tmp_path / "results" / "sr" / "2d_axial__diffensPlans")


def test_parse_fold():
    assert parse_fold("2") == 2 and parse_fold(1) == 1 and parse_fold("all") == "all"
    with pytest.raises(ModelFolderError, match="-f 'x': give a fold number"):
        parse_fold("x")


def test_model_folders_and_their_plans_are_listed_in_order(tmp_path):
    dataset = tmp_path / "Dataset501_Brain"
    for relative in ("sr/2d_axial__diffensPlans", "sr/3d_ensembler__diffensPlans_tiny", "mt/2d_axial__diffensPlans",
                     "sr/not_a_model_folder"):
        (dataset / relative).mkdir(parents=True)
    assert [(m.task, m.configuration, m.plans_name) for m in model_folders(dataset)] == [
        ("mt", "2d_axial", "diffensPlans"), ("sr", "2d_axial", "diffensPlans"),
        ("sr", "3d_ensembler", "diffensPlans_tiny")]
    assert plans_names_in_results(dataset, "sr") == ["diffensPlans", "diffensPlans_tiny"]
    assert plans_names_in_results(dataset, "both") == [] and model_folders(tmp_path / "missing") == []


def test_a_recorded_checkpoint_path_gives_its_location(tmp_path):
    location = recorded_location(tmp_path, "sr/2d_axial__diffensPlans/fold_all/checkpoint_final.pth")
    assert location == ModelLocation(tmp_path, "sr", "2d_axial", "diffensPlans", "all")
    for bad in ("sr/2d_axial/fold_0/checkpoint_final.pth", "sr/2d_axial__diffensPlans/checkpoint_final.pth"):
        with pytest.raises(ModelFolderError, match="not a checkpoint path"):
            recorded_location(tmp_path, bad)


def test_trained_fold_folders_are_those_with_the_checkpoint(tmp_path):
    trained = ModelLocation(tmp_path, "sr", "2d_axial", "diffensPlans", 1)
    trained.fold_folder.mkdir(parents=True)
    trained.checkpoint("checkpoint_final.pth").write_bytes(b"")
    (trained.model_folder / "fold_0").mkdir()
    assert trained_fold_folders(tmp_path, "checkpoint_final.pth") == [trained.fold_folder]
