"""JAX's persistent compilation cache for the command line: each program is compiled once per machine.

Every ``maskrcnn`` command turns it on, so that a run of the same programs again (a resumed or
repeated training, a second evaluation, predictions over the next cohort) loads XLA's compiled code from
disk instead of compiling it: the `fast` train step took 32.8 s cold and 10.0 s
warm on a 2-core CPU, most of the warm time tracing and lowering the Python code, which runs every time
(``experiments/results/model.md``).

Where the cache lives:

- ``JAX_COMPILATION_CACHE_DIR`` (or ``jax.config``'s ``jax_compilation_cache_dir``), when set, is JAX's
  own setting and is left as it is;
- otherwise ``MASKRCNN_COMPILE_CACHE``: a folder, or ``off`` (also ``0``, ``false``, ``none``) for no cache;
- otherwise ``$XDG_CACHE_HOME/maskrcnn/jax`` (``~/.cache/maskrcnn/jax``).

The chosen folder is also exported as ``JAX_COMPILATION_CACHE_DIR``, so the processes a command starts
(``maskrcnn predict --workers N``'s Dask workers) share it; workers started by hand (``dask worker``) use
it when that variable is set in their environment.

Programs are stored compressed, one file each; the folder is never trimmed, and deleting it only costs
the next run its compiles. (JAX can evict beyond a size,
``jax_compilation_cache_max_size``, with the ``filelock`` package, which we do not require.)

JAX keys each program by its computation, the compile options, the device kind and the jax and jaxlib
versions, so a changed config or model compiles afresh. XLA's CPU loader compares the CPU features a
program was compiled for with the host's; on a cluster whose machines of different CPU kinds share a
home folder, point ``MASKRCNN_COMPILE_CACHE`` at a local disk to keep their programs apart.
"""

from __future__ import annotations

import os

ENV = "MASKRCNN_COMPILE_CACHE"
OFF = ("", "0", "off", "false", "none")


def cache_dir(environ, jax_dir: str | None) -> str | None:
    """The cache folder the rules above choose (None: no cache), given the environment and JAX's own
    ``jax_compilation_cache_dir``."""
    if jax_dir:
        return jax_dir
    value = environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in OFF else os.path.expanduser(value)
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "maskrcnn", "jax")


def enable(environ=None) -> str | None:
    """Turns the cache on as :func:`cache_dir` chooses and returns its folder (None: off)."""
    import jax

    environ = os.environ if environ is None else environ
    own = jax.config.jax_compilation_cache_dir
    path = cache_dir(environ, own)
    if path and not own:
        jax.config.update("jax_compilation_cache_dir", path)
        # JAX reads it in the processes this one starts: a local Dask cluster's workers share the cache.
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    return path
