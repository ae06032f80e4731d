"""Share trained models: export them (with the experts their ensemblers need) into a zip, install one elsewhere."""
from diffens_auto.model_sharing.export import MANIFEST_FILE, ModelSharingError, export_model_to_zip
from diffens_auto.model_sharing.install import install_model_from_zip

__all__ = ["MANIFEST_FILE", "ModelSharingError", "export_model_to_zip", "install_model_from_zip"]
