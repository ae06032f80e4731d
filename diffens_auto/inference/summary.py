"""prediction_summary.json / .csv: every case of a prediction run with its status, message, time and files.

One part of a split run (-num_parts P -part_id I, P > 1) writes prediction_summary_part_I_of_P.* and
prediction_settings_part_I_of_P.json, so parallel parts never write the same file.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from diffens_auto.atomic import atomic_path, atomic_write_json
from diffens_auto.errors import DiffensError

STATUSES = ("done", "failed", "skipped")


def _suffix(num_parts: int, part_id: int) -> str:
    return "" if num_parts == 1 else f"_part_{part_id}_of_{num_parts}"


class PredictionSummary:
    """The rows of one prediction run, written after every case so a killed run still leaves its record."""

    def __init__(self, output_folder: Path, num_parts: int = 1, part_id: int = 0):
        """Summary files in `output_folder`, named for the part."""
        suffix = _suffix(num_parts, part_id)
        self.json_file = output_folder / f"prediction_summary{suffix}.json"
        self.csv_file = output_folder / f"prediction_summary{suffix}.csv"
        self.settings_file = output_folder / f"prediction_settings{suffix}.json"
        self.rows: list[dict] = []

    def add(self, case_id: str, status: str, message: str, seconds: float, *, outputs: Mapping[str, Path],
            inputs: Mapping) -> None:
        """Record one case."""
        assert status in STATUSES
        self.rows.append({"case": case_id, "status": status, "message": message, "seconds": round(seconds, 2),
                          "outputs": [str(p) for p in outputs.values()] if status != "failed" else [],
                          "inputs": [str(p) for p in inputs.values()]})

    def run_case(self, case_id: str, work: Callable[[], str], *, outputs: Mapping[str, Path], inputs: Mapping) -> None:
        """Run one case's `work` (it returns the row's message) and record it as done, or as failed with the cause."""
        started = time.time()
        try:
            message = work()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:   # one bad case never stops the batch: it is reported in the summary
            message = f"{type(e).__name__}: {e}"
            if not isinstance(e, (DiffensError, ValueError, OSError)):
                message += "\n" + traceback.format_exc(limit=-3)
            self.add(case_id, "failed", message, time.time() - started, outputs=outputs, inputs=inputs)
            return
        self.add(case_id, "done", message, time.time() - started, outputs=outputs, inputs=inputs)

    def as_dict(self) -> dict:
        """Counts and rows, as written to the JSON file."""
        counts = {s: sum(r["status"] == s for r in self.rows) for s in STATUSES}
        return {"num_cases": len(self.rows), **counts, "cases": self.rows}

    def write(self) -> None:
        """Write the JSON and CSV files (atomically)."""
        atomic_write_json(self.as_dict(), self.json_file)
        table = pd.DataFrame([{**r, "outputs": ";".join(r["outputs"]), "inputs": ";".join(r["inputs"])}
                              for r in self.rows], columns=["case", "status", "message", "seconds", "outputs",
                                                            "inputs"])
        with atomic_path(self.csv_file) as tmp:
            table.to_csv(tmp, index=False)
