"""What every benchmark shares: where it ran, timing over rounds, and the results writer.

Each results file starts with :func:`header`: the command that made it, the date, the device JAX found at
run time (never a constant: the same script runs on a GPU), the host and the commit of the code measured.
Times are taken by :func:`rounds`, which calls the compared functions in turn, round after round, so that
the machine's drift falls on all of them alike, and reports each one's median and spread.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
if ROOT not in sys.path:  # benchmarks run as scripts: `python experiments/bench_x.py`
    sys.path.insert(0, ROOT)


def device() -> str:
    """The accelerator JAX uses now, e.g. ``"1 x NVIDIA H200 (gpu)"`` or ``"1 x cpu (cpu)"``."""
    import jax

    devices = jax.devices()
    kind = getattr(devices[0], "device_kind", devices[0].platform)
    return f"{len(devices)} x {kind} ({devices[0].platform})"


def on_gpu() -> bool:
    import jax

    return jax.devices()[0].platform == "gpu"


def cpu_name(cpuinfo: str) -> str | None:
    """The first CPU of a ``/proc/cpuinfo`` text: its model name, and its family and model numbers where
    given (a virtual machine may name every generation of a vendor's CPUs alike, "AMD EPYC", while XLA's
    CPU code, and so a seeded run's last digits, differ between generations)."""
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block ends
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return None
    numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return fields["model name"] + (f" ({', '.join(numbers)})" if numbers else "")


def host() -> str:
    """The machine around the device: the CPU, the cores this process may use, Python."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = cpu_name(f.read())
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores of {cpu}, Python {platform.python_version()}"


def commit() -> str:
    """The measured code's commit, ``+dirty`` when tracked files differ from it (results files aside)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!experiments/results"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + ("+dirty" if changed else "")


def where() -> dict:
    """Date, device, host and commit, for a results file's record."""
    return {"date": time.strftime("%Y-%m-%d"), "device": device(), "host": host(), "commit": commit()}


def header(command: str, record: dict | None = None) -> str:
    """The first lines of a results file: the command, and where and on what code it ran."""
    r = record or where()
    return (
        f"Command: `{command}`\n\nRun {r['date']} on {r['device']}; host {r['host']}; commit {r['commit']}."
    )


def rounds(fns: dict[str, Callable[[], float]], count: int) -> dict[str, list[float]]:
    """Calls every ``fn`` (each returns the seconds of one timed call) once a round for ``count`` rounds,
    the order reversed every other round. Returns name -> the seconds of each round."""
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(count):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(fns[name]())
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """``min-max`` of a list, for the range of a ratio or time over rounds."""
    return f"{min(values):.2f}-{max(values):.2f}"


def timed(fn: Callable, *args) -> tuple[object, float]:
    """``fn(*args)`` with every array result ready, and the seconds it took."""
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def median_seconds(fn, *args, repeats: int = 7) -> float:
    """Median seconds of ``fn(*args)`` over ``repeats`` calls after a first, untimed one (the compile)."""
    import jax

    jax.block_until_ready(fn(*args))
    return median([timed(fn, *args)[1] for _ in range(repeats)])


FORM_REPEATS = 3  # calls timed per form in form_timings


def form_timings(fn, *args):
    """(forward ms, forward + backward ms, [output, *gradients]) of ``fn`` jitted: one form of a
    computation whose rewrite is being compared (the gradient of a sum of squares of its output with
    respect to every argument)."""
    import jax
    import jax.numpy as jnp

    forward = jax.jit(fn)
    both = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.square(fn(*a))), argnums=tuple(range(len(args)))))
    return (
        1000 * median_seconds(forward, *args, repeats=FORM_REPEATS),
        1000 * median_seconds(both, *args, repeats=FORM_REPEATS),
        [forward(*args), *both(*args)],
    )


def relative_difference(old, new) -> float:
    """The largest |old - new| over matching arrays (an output and its gradients), each relative to its
    largest |old|."""
    import jax.numpy as jnp

    return max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in zip(old, new, strict=True))


def in_child(argv: list[str], env: dict | None = None) -> dict:
    """Runs ``python *argv`` in a process of its own and returns the JSON object its last line prints
    (a benchmark's own memory, its own compilation cache, or XLA flags set before JAX starts)."""
    import json

    out = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write(path: str, text: str) -> None:
    """Writes a results file (its folder made if needed) and prints it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text.rstrip() + "\n")
    print(text)
