"""Multi-process gloo harness: one spawn per world size runs many scenarios on the same group.

`run_scenarios(world_size, [(name, fn, kwargs), ...])` starts `world_size` CPU processes, builds
one gloo process group, runs every scenario in order on all ranks and returns rank 0's result of
each (or the traceback of a failure). A collective that never completes times out instead of
hanging the suite. `run_once` makes a fixture's spawn happen once per test session under
pytest-xdist too.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import shutil
import socket
import tempfile
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, scenarios, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=90))
    results = {}
    try:
        for name, fn, kwargs in scenarios:
            try:
                results[name] = ("ok", fn(rank, world_size, **kwargs))
            except Exception:  # noqa: BLE001 - reported to the test
                results[name] = ("error", f"rank {rank}:\n{traceback.format_exc()}")
                break  # the group may be out of step now; the remaining scenarios are not run
            dist.barrier()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()


def run_scenarios(world_size: int, scenarios) -> dict:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world_size, _free_port(), scenarios, out), nprocs=world_size, join=True)
        per_rank = [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    merged = {}
    for name, _, _ in scenarios:
        errors = [r[name][1] for r in per_rank if name in r and r[name][0] == "error"]
        if errors:
            merged[name] = ("error", "\n".join(errors))
        elif name in per_rank[0]:
            merged[name] = per_rank[0][name]
        else:
            merged[name] = ("error", "not run: an earlier scenario failed")
    return merged


def run_once(tmp_path_factory, name: str, compute) -> tuple[object, Path]:
    """(`compute(folder)`, folder), computed once per test session.

    Under pytest-xdist every worker that runs a test of a module runs its module fixtures
    again; for a multi-process spawn that doubles the suite's heaviest work. The first worker
    computes in the session's shared temporary folder and saves the result; the others wait
    for it on a file lock and load it.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        return compute(folder), folder
    shared = tmp_path_factory.getbasetemp().parent
    folder, saved = shared / name, shared / name / "result.pt"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not saved.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            torch.save(compute(folder), saved)
        return torch.load(saved, weights_only=False), folder
