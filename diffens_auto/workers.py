"""Worker processes for per-case work (fingerprint, integrity check, preprocessing), with a progress bar."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Callable, Sequence

from tqdm import tqdm

from diffens_auto.errors import DiffensError

WORKER_DIED = ("a worker process died while working on (or waiting for) this case: killed for lack of memory, "
               "or (in a script) no `if __name__ == '__main__':` guard. Fix: re-run with fewer processes (-np) "
               "or add the guard.")


class WorkerDiedError(DiffensError, RuntimeError):
    """A worker process died (e.g. killed for memory) before finishing its job."""


def map_in_workers(function: Callable, jobs: Sequence[tuple], num_processes: int, desc: str,
                   verbose: bool = True) -> list:
    """Return [function(*job) for job in jobs] (in job order), computed in spawned processes when num_processes > 1.

    A job whose worker dies raises WorkerDiedError naming the job's first element (the case).
    """
    progress = dict(total=len(jobs), desc=desc, disable=not verbose)
    if num_processes <= 1 or len(jobs) <= 1:
        return [function(*job) for job in tqdm(jobs, **progress)]
    results = [None] * len(jobs)
    # ProcessPoolExecutor, unlike multiprocessing.Pool, notices a dead worker instead of waiting for it forever.
    with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=get_context("spawn")) as executor:
        futures = {executor.submit(function, *job): i for i, job in enumerate(jobs)}
        for future in tqdm(as_completed(futures), **progress):
            index = futures[future]
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                raise WorkerDiedError(f"case {jobs[index][0]}: {WORKER_DIED}") from None
    return results
