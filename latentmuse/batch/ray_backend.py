"""``latentmuse batch --ray``: the jobs as Ray tasks on long-lived actors, one per GPU (docs/SCALE.md).

Ray does the distributed part; nothing here is a queue, a scheduler or a worker protocol of our own:

- one actor per GPU (``num_gpus=1``), or CPU actors (``num_cpus=1``) when the cluster has no GPU,
  each holding a loaded :class:`~latentmuse.runtime.lipsync.LipSync` for the batch's life;
- each job is an actor method call, handed out by Ray's :class:`ray.util.ActorPool`; an actor that
  dies (its node lost, the process killed) is restarted by Ray (``max_restarts``) and its job retried
  there (``max_task_retries``); the restarted actor loads again, and the retried writer deletes the
  dead attempt's temporary files (:func:`~latentmuse.runtime.media.writer.sweep_stale_partials`);
- outputs and reports are written by the actors to the job list's paths, which must be on storage
  every node sees; the driver plans (resumability, exactly as a local batch) and gathers the results;
- Ctrl-C (or SIGTERM) on the driver asks every actor to stop (a threaded actor's second method call
  sets a flag its running job checks at every progress step, so the job's writer deletes its
  temporary files as in a local interrupt), waits for them briefly, then kills the actors.

``ray`` is an optional dependency (``pip install 'latentmuse[ray]'``), imported only here.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import asdict

from ..errors import LatentmuseError
from ..outcomes import Interrupted, signals_as_interrupts
from ..runtime.options import ClipOptions, LoadOptions, options_from_dict, options_to_dict
from .driver import BatchSummary, JobResult, Planned, StopCheck, execute, failed_result, not_run, skipped_result
from .jobs import Job
from .resume import RUN

#: Ray's restarts of a dead actor, and retries of the job it was running.
MAX_RESTARTS = 3
MAX_TASK_RETRIES = 3
#: How long the driver waits for stopped actors to clean up before killing them.
STOP_GRACE_S = 30.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise LatentmuseError("--ray needs Ray, which is not installed.", "pip install 'latentmuse[ray]'.") from None
    return ray


def connect(ray, address: str) -> bool:
    """Join the cluster at ``address``; ``auto``: a running cluster, else a new local one; ``local``: always
    a new local one (Ray's own keyword). True when this call started Ray (so the command shuts it down again).

    Ray's core installs its own fatal-signal handler for SIGTERM in the driver (it aborts the process
    with a stack dump); the handlers in place before (the command's: SIGINT and SIGTERM become a clean
    stop) are put back after ``ray.init``.
    """
    if ray.is_initialized():
        return False
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _init(ray, address)
    finally:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in handlers.items():
                if handler is not None:
                    signal.signal(signum, handler)


def _init(ray, address: str) -> bool:
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
        except ConnectionError:
            ray.init(log_to_driver=False)
        return True
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise LatentmuseError(f"no Ray cluster at {address} ({exc}).",
                              "start one (`ray start --head`), pass its address, or use --ray auto.") from None
    return True


class LipSyncWorker:
    """A Ray actor: one loaded LipSync; ``run`` one job at a time, ``stop`` from a second thread."""

    def __init__(self, load: dict, cpu_threads: int | None = None) -> None:
        if cpu_threads:
            import torch

            torch.set_num_threads(cpu_threads)
        from ..runtime.lipsync import LipSync

        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.stop_event = threading.Event()
        self.lipsync = LipSync(options_from_dict(LoadOptions, load))

    def run(self, index: int, job: dict, clip: dict, key: dict | None) -> tuple[int, dict]:
        self.stop_event.clear()
        result = execute(self.lipsync, Job.from_dict(job), options_from_dict(ClipOptions, clip), key,
                         StopCheck(self.stop_event), self.name)
        return index, asdict(result)

    def stop(self) -> None:
        self.stop_event.set()


def run_ray(planned: list[Planned], summary: BatchSummary, load: LoadOptions, address: str, workers: int | None,
            progress) -> BatchSummary:
    """The planned jobs on Ray actors; fills and returns ``summary`` (see the module docstring)."""
    ray = import_ray()
    from ray.util import ActorPool

    tic = time.perf_counter()
    results: dict[int, JobResult] = {i: skipped_result(p) for i, p in enumerate(planned) if p.decision != RUN}
    todo = [i for i, p in enumerate(planned) if p.decision == RUN]
    progress.start("jobs", len(planned))
    progress.advance("jobs", len(results))
    started = connect(ray, address) if todo else False
    actors: list = []
    refs: dict = {}  # each call's future -> its job, to name the job of a call that errored
    try:
        if todo:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            count = min(workers or max(gpus, 1), len(todo))
            resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
            actor_class = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                                     max_concurrency=2, **resources)(LipSyncWorker)
            actors = [actor_class.remote(options_to_dict(load), None if gpus else 1) for _ in range(count)]
            summary.workers = count
            progress.note(f"Ray: {count} actor{'s' if count != 1 else ''} on "
                          f"{'GPU' if gpus else 'CPU'} ({ray.cluster_resources().get('CPU', 0):.0f} CPUs, {gpus} GPUs in the cluster)")
            pool = ActorPool(actors)

            def call(actor, args):
                ref = actor.run.remote(*args)
                refs[ref] = args[0]
                return ref

            for i in todo:
                item = planned[i]
                pool.submit(call, (i, item.job.to_dict(), options_to_dict(item.clip), item.key))
            _gather(ray, pool, planned, todo, results, refs, progress)
    except (Interrupted, KeyboardInterrupt) as exc:
        summary.interrupted = str(exc) or "interrupted by SIGINT"
        _stop(ray, actors, refs, results)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()
        summary.jobs = [results.get(i) or not_run(p.job) for i, p in enumerate(planned)]
        summary.seconds = time.perf_counter() - tic
    return summary


def _gather(ray, pool, planned, todo, results, refs, progress) -> None:
    """Results as they come. A signal is only recorded while Ray waits (an exception raised inside
    ``ray.wait`` would become a SystemError) and raised at the checkpoint between waits."""
    with signals_as_interrupts(raise_now=False) as guard:
        _gather_results(ray, pool, planned, todo, results, refs, progress, guard)


def _gather_results(ray, pool, planned, todo, results, refs, progress, guard) -> None:
    remaining = set(todo)
    while remaining:
        guard.check()
        progress.advance("jobs", 0)  # the command's own checkpoint too
        try:
            index, result = pool.get_next_unordered(timeout=0.5)
        except TimeoutError:
            continue
        except ray.exceptions.RayError as exc:  # the actor died past its restarts: that job failed
            index = _errored_index(ray, refs, remaining)
            results[index] = failed_result(planned[index].job, f"the Ray worker failed: {_first_line(exc)}")
        else:
            results[index] = JobResult(**result)
        remaining.discard(index)
        progress.note(f"done: {results[index].where} ({results[index].status}"
                      f"{', ' + results[index].reason if results[index].reason else ''})")
        progress.advance("jobs")


def _errored_index(ray, refs: dict, remaining: set[int]) -> int:
    """The job of a call that errored: ActorPool hands back the error without its arguments, so it is
    a still-unresolved job whose future is ready and raises (with several, any one: each later error
    takes another)."""
    for ref, index in refs.items():
        if index in remaining and ray.wait([ref], timeout=0)[0]:
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayError:
                return index
    return min(remaining)


def _stop(ray, actors, refs: dict, results: dict[int, JobResult]) -> None:
    """Ask every actor to stop its job (its writer cleans up), wait for the jobs in flight (up to
    :data:`STOP_GRACE_S`), and keep the results of those that finished meanwhile: the summary must
    match the files (a job at its last frame completes rather than stops)."""
    for actor in actors:
        try:
            actor.stop.remote()
        except Exception:  # noqa: BLE001 - a dead actor needs no stopping
            pass
    pending = [ref for ref, index in refs.items() if index not in results]
    if pending:
        ray.wait(pending, num_returns=len(pending), timeout=STOP_GRACE_S)
    for ref in pending:
        try:
            index, result = ray.get(ref, timeout=0)
        except Exception:  # noqa: BLE001 - stopped (Interrupted in the actor), still running, or dead
            continue
        results[index] = JobResult(**result)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
