"""Data-parallel training with DistributedDataParallel (DDP): launching ranks, process groups and collectives.

Two ways to start the same trainer (documentation/training.md, "Distributed training"):

- `diffens_train ... -num_gpus N` on one machine: `launch` spawns N processes (torch.multiprocessing, start
  method "spawn") that meet at a free TCP port on localhost; process i is rank i and trains on cuda:i (or on
  the CPU with `-device cpu`).
- `torchrun ... -m diffens_auto.run.train ...` on one or more machines: torchrun starts the processes and sets
  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (read through `diffens_auto.paths`); each process
  joins the group with env:// initialisation and trains on cuda:LOCAL_RANK.

Backends: NCCL on CUDA, gloo on the CPU. The plans' batch size is the global batch: each rank trains on
batch_size / world_size samples of its own (its loader is seeded with seed + rank), DDP averages the gradients,
so one step of N ranks equals one step on the whole batch (the mean loss of equal shares is the mean loss).
Outside a process group every collective here is a no-op, so single-process code calls them unconditionally.
"""
from __future__ import annotations

import pickle
import socket
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from diffens_auto import paths
from diffens_auto.errors import DiffensError

LOCALHOST = "127.0.0.1"
MAX_ERROR_BYTES = 4096       # per failed rank; a pipe holds 64 KiB before a writer blocks


class DistributedSetupError(DiffensError, ValueError):
    """A data-parallel request that cannot run (world size, device count, batch size that does not divide ...)."""


@dataclass(frozen=True)
class RankContext:
    """Who this process is in the group and where it trains."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model (already on `device`) wrapped for gradient averaging; as is in a group of one."""
        return wrap_model(model, self.device) if self.world_size > 1 else model


# ------------------------------------------------------------------ requests and devices


def backend_for(device) -> str:
    """NCCL on CUDA, gloo on the CPU."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        return "nccl"
    if device_type == "cpu":
        return "gloo"
    raise DistributedSetupError(f"-device {device_type}: data-parallel training runs on cuda (NCCL) or cpu (gloo).")


def rank_device(device, local_rank: int) -> torch.device:
    """cuda -> cuda:local_rank (made the current device); cpu stays cpu."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def check_world(num_processes: int, device, on_this_machine: bool = True) -> None:
    """Refuse what cannot start: fewer than 1 process, MPS, more CUDA ranks on this machine than it has GPUs."""
    if num_processes < 1:
        raise DistributedSetupError(f"-num_gpus {num_processes}: give 1 or more processes.")
    backend_for(device)
    if on_this_machine and torch.device(device).type == "cuda" and num_processes > torch.cuda.device_count():
        raise DistributedSetupError(f"-num_gpus {num_processes}: this machine has {torch.cuda.device_count()} CUDA "
                                    "device(s). Fix: lower -num_gpus, or use torchrun across machines.")


def per_rank_batch_size(batch_size: int, world_size: int, what: str = "the configuration") -> int:
    """The share of one rank: the global (plans) batch size divided by the world size, which must divide it."""
    if batch_size % world_size:
        divisors = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        raise DistributedSetupError(
            f"The batch size {batch_size} of {what} is the global batch of data-parallel training and must be "
            f"divisible by the number of processes ({world_size}). Fix: train with {divisors} processes, or set a "
            f"'batch_size' divisible by {world_size} for this configuration in a copy of the plans file (-p).")
    return batch_size // world_size


def torchrun_context(device) -> RankContext | None:
    """This process's rank when a launcher (torchrun) started it with WORLD_SIZE > 1, else None."""
    environment = paths.distributed_environment()
    if environment is None or environment["world_size"] <= 1:
        return None
    if environment["master_addr"] is None or environment["master_port"] is None:
        raise DistributedSetupError("WORLD_SIZE is set but MASTER_ADDR / MASTER_PORT are not: start data-parallel "
                                    "runs with torchrun (or -num_gpus N on one machine).")
    return RankContext(environment["rank"], environment["world_size"], environment["local_rank"],
                       torch.device(device))


# ------------------------------------------------------------------ process group


def init_process_group(context: RankContext, init_method: str = "env://") -> RankContext:
    """Join the group (NCCL on CUDA, gloo on the CPU); return the context with this rank's device."""
    device = rank_device(context.device, context.local_rank)
    dist.init_process_group(backend_for(device), init_method=init_method, rank=context.rank,
                            world_size=context.world_size)
    return RankContext(context.rank, context.world_size, context.local_rank, device)


def is_active() -> bool:
    """Whether this process is in an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def destroy_process_group() -> None:
    if is_active():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device, find_unused_parameters: bool = False) -> DistributedDataParallel:
    """DistributedDataParallel around a model on `device`.

    find_unused_parameters stays off: every parameter of the experts and ensemblers receives a gradient in every
    step (tests/training/test_distributed.py checks it), and the search costs a graph traversal per step.
    """
    device = torch.device(device)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op outside a group)."""
    if is_active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over the ranks, in float64 (the values themselves outside a group)."""
    if not is_active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_mean(value: float) -> float:
    """The mean of one number over the ranks (e.g. a logged loss)."""
    return all_reduce_sum([value])[0] / (dist.get_world_size() if is_active() else 1)


# ------------------------------------------------------------------ launching


def free_port() -> int:
    """A TCP port on localhost that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def run_rank(worker: Callable, context: RankContext, init_method: str, args: tuple,
             on_error: Callable[[BaseException], None] | None = None):
    """Join the group, run worker(context, *args), leave the group (also after an error).

    `on_error(exception)` runs before the group is left, so the rank that failed first reports first (the others
    fail only once it has gone).
    """
    context = init_process_group(context, init_method)
    try:
        return worker(context, *args)
    except BaseException as error:
        if on_error is not None:
            on_error(error)
        raise
    finally:
        destroy_process_group()


@dataclass(frozen=True)
class _SpawnedJob:
    """What every spawned rank runs and how it joins the group, as one picklable argument of mp.spawn."""

    worker: Callable
    world_size: int
    init_method: str
    device: str | torch.device
    threads: int
    args: tuple


def _spawned(index: int, job: _SpawnedJob, errors) -> None:
    """Body of spawned process `index` (= rank = local rank): hands its exception to the parent via `errors`."""
    if torch.device(job.device).type == "cpu":
        torch.set_num_threads(job.threads)       # the ranks share the machine's cores
    run_rank(job.worker, RankContext(index, job.world_size, index, torch.device(job.device)), job.init_method,
             job.args, on_error=lambda error: errors.put(_pickled(error, index)))


def _pickled(error: BaseException, rank: int) -> bytes:
    """The exception as bytes for the parent; its text in a RuntimeError if it does not pickle or is huge."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
        if len(data) < MAX_ERROR_BYTES:    # stay well below a pipe's buffer: the parent reads only after join
            return data
    except Exception:  # noqa: BLE001 - any pickling failure: fall back to the text
        pass
    return pickle.dumps(RuntimeError(f"rank {rank}: {type(error).__name__}: {str(error)[:MAX_ERROR_BYTES // 4]}"))


def launch(worker: Callable, num_processes: int, device, *args) -> None:
    """Run worker(context: RankContext, *args) on every rank of a data-parallel job.

    Under torchrun (WORLD_SIZE > 1 in the environment) this process is one rank and joins with env://;
    otherwise `num_processes` processes are spawned on this machine (rendezvous at a free localhost port) and
    this call returns when all have finished. `worker` and `args` must pickle (a module-level function). The
    first exception a spawned rank raises is raised here as itself (so user errors stay user errors).
    """
    context = torchrun_context(device)
    if context is not None:
        run_rank(worker, context, "env://", args)
        return
    check_world(num_processes, device)
    errors = mp.get_context("spawn").SimpleQueue()
    threads = max(1, torch.get_num_threads() // num_processes)
    init_method = f"tcp://{LOCALHOST}:{free_port()}"
    job = _SpawnedJob(worker, num_processes, init_method, device, threads, args)
    try:
        mp.spawn(_spawned, args=(job, errors), nprocs=num_processes, join=True)
    except mp.ProcessRaisedException:
        if not errors.empty():
            raise pickle.loads(errors.get()) from None
        raise
