"""Acceptance round trip on the demo brain phantom: an oblique, anisotropic, noise-free case that needs
resampling comes back through preprocess -> invert -> write with its geometry, >= 35 dB, background exactly 0."""
import numpy as np
import SimpleITK as sitk

from diffens_auto.dataset import find_training_cases, load_dataset_json
from diffens_auto.demo.dataset import make_demo_dataset
from diffens_auto.fingerprint import extract_fingerprint
from diffens_auto.planning import plan_experiment
from diffens_auto.preprocessing import export_prediction, preprocess_case
from diffens_auto.workflows.plan_and_preprocess import tasks_for_planner

OBLIQUE_ANISOTROPIC_CASE = "DemoBrain_007"  # demo cases i % 3 == 1 are oblique, i % 5 == 2 anisotropic


def test_oblique_anisotropic_phantom_round_trip(tmp_path):
    folder = make_demo_dataset(tmp_path / "raw", num_cases=8, noise=0.0)
    spec = load_dataset_json(folder)
    cases = find_training_cases(spec)
    plans = plan_experiment(extract_fingerprint(spec, cases, 1), tasks_for_planner(spec), spec.channel_names,
                            folder.name, preset="tiny")
    files = cases[OBLIQUE_ANISOTROPIC_CASE]
    data, _, properties, mask_original = preprocess_case(files, plans, OBLIQUE_ANISOTROPIC_CASE,
                                                         return_mask_original=True)
    spacing = np.array(properties["spacing_before_resampling"])
    direction = np.array(properties["image_props"]["direction"])
    assert spacing.max() / spacing.min() >= 2, "the case must be anisotropic"
    assert np.abs(np.abs(direction) - np.eye(3)).max() > 0.05, "the case must be oblique"
    assert properties["shape_after_resampling"] != properties["shape_after_crop"], "the case must be resampled"

    for channel, original_file in enumerate(files):
        out = tmp_path / f"inverted_{channel}.nii.gz"
        export_prediction(data[channel], properties, channel, out, mask_original=mask_original)
        original, inverted = sitk.ReadImage(str(original_file)), sitk.ReadImage(str(out))
        assert inverted.GetSize() == original.GetSize()
        assert np.allclose(inverted.GetSpacing(), original.GetSpacing(), atol=1e-4)
        assert np.allclose(inverted.GetOrigin(), original.GetOrigin(), atol=1e-4)
        assert np.allclose(inverted.GetDirection(), original.GetDirection(), atol=1e-6)
        a, b = sitk.GetArrayFromImage(original), sitk.GetArrayFromImage(inverted)
        foreground = a != 0
        assert np.all(b[~foreground] == 0), "background must stay exactly 0"
        data_range = a[foreground].max() - a[foreground].min()
        psnr = 10 * np.log10(data_range ** 2 / np.mean((a[foreground] - b[foreground]) ** 2))
        assert psnr >= 35, f"channel {channel}: {psnr:.1f} dB"
