"""A tiny ellipsoid dataset with only a recon task, in fresh diffens folders: what the recon tests start from."""
import json
from pathlib import Path

from diffens_auto import paths
from diffens_auto.demo.dataset import make_demo_dataset

RECON_TASK = "recon"
KSPACE_4X = {"type": "kspace", "mask": "poisson", "acceleration": 4, "acs": 6, "slice_axis": 2}


def ellipsoid_recon_dataset(root: Path, monkeypatch, dataset_id: int, num_cases: int, *,
                            kspace: dict = KSPACE_4X) -> Path:
    """`num_cases` 24^3 ellipsoid phantoms whose dataset.json has one recon task; diffens folders under `root`."""
    for variable in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE):
        (root / variable).mkdir()
        monkeypatch.setenv(variable, str(root / variable))
    monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "0")
    raw = make_demo_dataset(num_cases=num_cases, shape=(24, 24, 24), spacing=(2, 2, 2), kind="ellipses",
                            dataset_id=dataset_id, noise=0)
    spec = json.loads((raw / "dataset.json").read_text())
    spec["tasks"] = {RECON_TASK: {"target": "T1", "inputs": [], "degradation": kspace}}
    (raw / "dataset.json").write_text(json.dumps(spec))
    return raw
