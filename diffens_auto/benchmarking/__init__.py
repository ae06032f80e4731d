"""Benchmarks and measurements that check the pipeline's models of itself (memory, speed)."""
from .memory_tracker import PeakMemoryTracker, StepMeasurement, measure_training_step

__all__ = ["PeakMemoryTracker", "StepMeasurement", "measure_training_step"]
