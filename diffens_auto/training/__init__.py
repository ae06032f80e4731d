"""Training of the 2D experts and the 3D ensembler: data loading and augmentation, the loop, checkpoints, DDP.

    resolve_run (run_spec.py) -> RunSpec;  train_model(run, TrainingOptions(...)) (api.py)
    build_trainer (assembly.py) -> Trainer (trainer.py) with an objective (objectives.py), an EpochSchedule
    (schedule.py) and a loader factory (data_loading.py, augmentation.py)
The diffens_train command's API, training followed by validation, is diffens_auto.workflows.train.train.
"""
