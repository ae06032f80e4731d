"""A trained model on disk: where it lives (ModelLocation), its checkpoint format, its json files, its experts.

Training writes these, inference and model sharing read them; none of them imports another for it.
"""
