"""diffens_auto: a self-configuring Diff-Ensembler pipeline for 3D medical volume translation."""

__version__ = "0.1.0"
