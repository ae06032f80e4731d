"""diffens_demo: the whole pipeline on synthetic phantoms (dataset, plan, train, predict, evaluate, report)."""
from diffens_auto.demo.pipeline import FULL, SMOKE, DemoSettings, run_demo

__all__ = ["FULL", "SMOKE", "DemoSettings", "run_demo"]
