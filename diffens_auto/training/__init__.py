"""Training: task conditioning, data loading and augmentation (the trainer builds on these).

    task_volumes(data, properties, plans, task) -> (target (1,X,Y,Z), inputs (n_in,X,Y,Z))   renormalised for the task
    make_condition(target, inputs, task_plans) -> (condition, y0);  target_from_y0(y0, condition, task_plans)
    upsample_to_grid(lowres, factor, hr_shape);  task_background(properties, plans, task)
    ExpertDataLoader / EnsemblerDataLoader(data_folder, case_ids, plans, task, configuration, seed, epoch, ...)
    AugmentationSettings, augment_spatial, augment_intensity (see augmentation.py for the order and the choices)
"""
from diffens_auto.training.augmentation import (AugmentationSettings, BlockAlignedTransform, augment_intensity,
                                                augment_spatial, block_step, draw_block_aligned, draw_placement,
                                                place_in_crop)
from diffens_auto.training.conditioning import (degraded_condition, make_condition, target_from_y0, task_background,
                                                task_normalization, task_volumes, upsample_to_grid)
from diffens_auto.training.data_loading import (EnsemblerBatchSampler, EnsemblerDataLoader, ExpertBatchSampler,
                                                ExpertDataLoader, split_case_ids)

__all__ = [
    "task_volumes", "task_normalization", "task_background", "upsample_to_grid", "degraded_condition",
    "make_condition", "target_from_y0",
    "AugmentationSettings", "BlockAlignedTransform", "augment_intensity", "augment_spatial", "block_step",
    "draw_block_aligned", "draw_placement", "place_in_crop",
    "ExpertDataLoader", "EnsemblerDataLoader", "ExpertBatchSampler", "EnsemblerBatchSampler", "split_case_ids",
]
