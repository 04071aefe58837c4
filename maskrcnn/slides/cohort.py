"""A cohort of slides: one after another in this process, or spread over a Dask cluster.

Each slide either finishes (its outputs complete, the summary written last), is skipped (``resume`` and
its summary exists), or fails with a message naming the file and the fix, while the other slides go on.
A slide killed half-way left only its ``.partial`` folder, and is redone from the start.

On a cluster each worker holds one device and the model compiled on it: a task is one slide, it needs
the worker resource ``device=1`` (so a worker runs one slide at a time), and the model is loaded once
per worker process (:func:`maskrcnn.slides.pipeline.load_tile_model` is cached). Workers write into the
output folder themselves, so it must be on storage every worker sees.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence

from maskrcnn.slides.pipeline import SlideOptions, TileModel, segment_slide
from maskrcnn.slides.reader import SlideError
from maskrcnn.slides.writers import is_finished, output_paths

RESOURCE = "device"  # the Dask worker resource a slide task needs one of: one worker per device


@dataclasses.dataclass(frozen=True)
class SlideResult:
    path: str
    name: str
    status: str  # "done", "skipped" (already finished, --resume) or "failed"
    summary: dict | None = None
    error: str | None = None


def run_slide(
    path: str,
    name: str,
    out_dir: str,
    model: TileModel | Callable[[], TileModel],
    options: SlideOptions,
    resume: bool,
) -> SlideResult:
    """One slide, its errors caught and reported as a failed :class:`SlideResult`.

    ``model`` is a :class:`TileModel` or a function returning one (called only if the slide is run).
    """
    if resume and is_finished(out_dir, name):
        return SlideResult(path, name, "skipped")
    try:
        if not isinstance(model, TileModel):
            model = model()
        summary = segment_slide(path, name, out_dir, model, options)
    except SlideError as error:
        return SlideResult(path, name, "failed", error=str(error))
    except Exception as error:  # a cohort goes on past one slide's failure; the message says what it was
        return SlideResult(path, name, "failed", error=f"{path}: {type(error).__name__}: {error}")
    return SlideResult(path, name, "done", summary)


def local_cluster(workers: int):
    """A Dask cluster on this machine of ``workers`` processes, worker i seeing only GPU i.

    Each worker runs one thread and declares the resource ``device=1``. GPU i is the i-th of this
    process's CUDA_VISIBLE_DEVICES when that is set (else device i); on a machine without GPUs the
    variable is ignored and every worker runs on the CPU.
    """
    from distributed import Nanny, Scheduler, SpecCluster

    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    specs = {
        i: {
            "cls": Nanny,
            "options": {
                "host": "127.0.0.1",  # this machine only: the scheduler and its workers talk over loopback
                "dashboard": False,
                "silence_logs": logging.ERROR,
                "nthreads": 1,
                "resources": {RESOURCE: 1},
                "env": {"CUDA_VISIBLE_DEVICES": visible[i % len(visible)] if visible else str(i)},
            },
        }
        for i in range(workers)
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.ERROR)


def _check_workers(client, address: str):
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        raise ValueError(f"--scheduler {address}: the cluster has no workers; start one per device")
    if not any(w.get("resources", {}).get(RESOURCE) for w in workers.values()):
        raise ValueError(
            f"--scheduler {address}: no worker declares the resource {RESOURCE}=1, so no slide could run; "
            f"start each worker with one device: CUDA_VISIBLE_DEVICES=<i> dask worker {address} --nthreads 1 "
            f"--resources {RESOURCE}=1"
        )


def run_cohort(
    jobs: Sequence[tuple[str, str]],
    out_dir: str,
    make_model: Callable[[], TileModel],
    options: SlideOptions,
    *,
    resume: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    report: Callable[[str], None] = print,
) -> list[SlideResult]:
    """Runs every (path, name) slide; returns their results in ``jobs``' order.

    Args:
      make_model: a picklable function returning the :class:`TileModel` (on a cluster, each worker calls
        it; :func:`functools.partial` of :func:`load_tile_model` and a workdir).
      workers: 0 runs the slides here, one after another; N > 0 on a local Dask cluster of N workers
        (one per device).
      scheduler: the address of a running Dask scheduler (``tcp://host:8786``): run on its workers.
      report: called with one line per slide as it ends.
    """
    os.makedirs(out_dir, exist_ok=True)
    results: dict[str, SlideResult] = {}

    def note(result: SlideResult):
        results[result.name] = result
        if result.status == "done":
            s = result.summary
            report(
                f"{result.name}: {s['nuclei']} nuclei, {s['tiles_read']} tiles read, "
                f"{s['tiles_skipped_background']} background tiles skipped, {s['seconds']:.1f} s "
                f"-> {output_paths(out_dir, result.name)['geojson']}"
            )
        elif result.status == "skipped":
            report(f"{result.name}: already finished, skipped (--resume)")
        else:
            report(f"{result.name}: FAILED: {result.error}")

    if not workers and not scheduler:
        model = None
        for path, name in jobs:
            if resume and is_finished(out_dir, name):
                note(SlideResult(path, name, "skipped"))
                continue
            if model is None:
                model = make_model()
            note(run_slide(path, name, out_dir, model, options, resume))
        return [results[name] for _, name in jobs]

    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ValueError(
            "--workers and --scheduler run on Dask: pip install 'maskrcnn-nuclei[cluster]'"
        ) from None
    out_dir = os.path.abspath(out_dir)  # workers may run elsewhere: paths on the storage they all see
    jobs = [(os.path.abspath(path), name) for path, name in jobs]
    cluster = None if scheduler else local_cluster(workers)
    worker_options = dataclasses.replace(options, progress=False)
    try:
        with Client(scheduler or cluster) as client:
            if scheduler:
                _check_workers(client, scheduler)
            futures = {
                client.submit(
                    run_slide,
                    path,
                    name,
                    out_dir,
                    make_model,
                    worker_options,
                    resume,
                    resources={RESOURCE: 1},
                    pure=False,
                    key=f"slide-{i}-{name}",
                ): (path, name)
                for i, (path, name) in enumerate(jobs)
            }
            for future in as_completed(futures):
                path, name = futures[future]
                try:
                    note(future.result())
                except Exception as error:  # the worker died (KilledWorker) or the task could not run
                    note(SlideResult(path, name, "failed", error=f"{path}: {type(error).__name__}: {error}"))
    finally:
        if cluster is not None:
            cluster.close()
    return [results[name] for _, name in jobs]
