"""Install diffens_auto: Diff-Ensembler as a self-configuring pipeline."""
import re
from pathlib import Path

from setuptools import find_packages, setup

# the version is written once, in the package (diffens_auto.__version__)
VERSION = re.search(r'^__version__ = "([^"]+)"', Path(__file__).with_name("diffens_auto").joinpath(
    "__init__.py").read_text(encoding="utf-8"), re.M).group(1)

setup(
    name="diffens_auto",
    version=VERSION,
    description="Self-configuring Diff-Ensembler pipeline for 3D medical volume translation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["diffens_auto", "diffens_auto.*"]),
    install_requires=[
        "torch>=2.1,<3",
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.2",
        "nibabel>=5.0",
        "blosc2>=2.5",
        "batchgenerators>=0.25",
        "pandas>=2.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "diffusers>=0.25", "scikit-image>=0.21"],
    },
    entry_points={
        "console_scripts": [
            "diffens_plan_and_preprocess=diffens_auto.run.plan_and_preprocess:plan_and_preprocess_entry",
            "diffens_extract_fingerprint=diffens_auto.run.plan_and_preprocess:extract_fingerprint_entry",
            "diffens_plan_experiment=diffens_auto.run.plan_and_preprocess:plan_experiment_entry",
            "diffens_preprocess=diffens_auto.run.plan_and_preprocess:preprocess_entry",
            "diffens_make_demo_dataset=diffens_auto.run.make_demo_dataset:make_demo_dataset_entry",
            "diffens_demo=diffens_auto.run.demo:demo_entry",
            "diffens_benchmark=diffens_auto.run.benchmark:benchmark_entry",
            "diffens_train=diffens_auto.run.train:train_entry",
            "diffens_predict=diffens_auto.run.predict:predict_entry",
            "diffens_evaluate=diffens_auto.run.evaluate:evaluate_entry",
            "diffens_degrade=diffens_auto.run.degrade:degrade_entry",
            "diffens_export_model_to_zip=diffens_auto.run.model_sharing:export_model_entry",
            "diffens_install_pretrained_model_from_zip=diffens_auto.run.model_sharing:install_model_entry",
        ],
    },
)
