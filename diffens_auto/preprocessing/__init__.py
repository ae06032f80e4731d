"""Preprocessing: crop to the foreground, resample to the target spacing, normalise, store, and invert it all."""
from diffens_auto.preprocessing.cropping import crop_to_nonzero, paste_into_bbox
from diffens_auto.preprocessing.inversion import export_prediction, invert_preprocessing
from diffens_auto.preprocessing.normalization import (case_normalization, degradation_key, degraded_params, denormalize,
                                                      kspace_params, mask_seed, normalize, params_from_lowres,
                                                      params_from_values, renormalize, select_params,
                                                      zero_filled_params)
from diffens_auto.preprocessing.preprocessor import (PreprocessingError, preprocess_case, preprocess_dataset,
                                                     preprocessing_settings)
from diffens_auto.preprocessing.resampling import compute_new_shape, resample_data, resample_mask, separate_z_axis
from diffens_auto.preprocessing.storage import (case_paths, finished_cases, is_case_finished, load_case,
                                                load_mask_original, load_properties, save_case)
