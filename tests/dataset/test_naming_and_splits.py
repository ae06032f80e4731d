"""-d 501 and -d Dataset501_Name resolve; splits are seeded, disjoint and stable."""
import pytest

from diffens_auto import paths
from diffens_auto.dataset.naming import DatasetNotFoundError, resolve_dataset_name
from diffens_auto.dataset.splits import ensure_splits, make_splits


def test_id_and_full_name_resolve(tmp_path):
    (tmp_path / "Dataset501_Brains").mkdir()
    (tmp_path / "Dataset502_Other").mkdir()
    assert resolve_dataset_name(501, [tmp_path]) == "Dataset501_Brains"
    assert resolve_dataset_name("501", [tmp_path]) == "Dataset501_Brains"
    assert resolve_dataset_name("Dataset502_Other", [tmp_path]) == "Dataset502_Other"
    with pytest.raises(DatasetNotFoundError, match="No dataset with id 503"):
        resolve_dataset_name(503, [tmp_path])
    (tmp_path / "Dataset501_Duplicate").mkdir()
    with pytest.raises(DatasetNotFoundError, match="ambiguous"):
        resolve_dataset_name(501, [tmp_path])


def test_unset_variable_is_named(monkeypatch):
    for v in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(paths.PathNotSetError, match="'diffens_raw' is not set"):
        resolve_dataset_name(501)
    with pytest.raises(paths.PathNotSetError, match="diffens_results"):
        paths.results_folder()


def test_splits_are_five_disjoint_folds_covering_all_cases(tmp_path):
    ids = [f"case_{i:03d}" for i in range(12)]
    splits = make_splits(ids)
    assert len(splits) == 5
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == ids
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and sorted(s["train"] + s["val"]) == ids
    assert make_splits(ids) == splits and make_splits(ids, seed=1) != splits
    path = tmp_path / "splits_final.json"
    assert ensure_splits(path, ids) == splits
    assert ensure_splits(path, ids, seed=99) == splits  # an existing split is kept, folds stay stable
    assert ensure_splits(path, ids + ["case_new"]) != splits  # a changed case list gets new splits
    assert len(make_splits(ids[:3])) == 3 and make_splits(ids[:1]) == [{"train": ids[:1], "val": ids[:1]}]
