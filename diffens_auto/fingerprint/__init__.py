"""Dataset fingerprint: spacings, shapes after crop-to-nonzero and per-channel foreground intensity statistics."""
from diffens_auto.fingerprint.extractor import case_fingerprint, extract_fingerprint, load_or_extract_fingerprint

__all__ = ["case_fingerprint", "extract_fingerprint", "load_or_extract_fingerprint"]
