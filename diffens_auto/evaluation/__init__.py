"""Evaluation: PSNR, 3D SSIM, MAE, MACE per case and region, and a dataset-level MMD, for folders of volumes.

    from diffens_auto.evaluation import psnr, ssim3d, mae, mace, mmd2, evaluate_folders
"""
from diffens_auto.evaluation.evaluate_folders import evaluate_folders
from diffens_auto.evaluation.metrics import mace, mae, psnr
from diffens_auto.evaluation.mmd import mmd2
from diffens_auto.evaluation.ssim import ssim3d

__all__ = ["evaluate_folders", "mace", "mae", "mmd2", "psnr", "ssim3d"]
