"""The command line's persistent compilation cache (maskrcnn.compile_cache): where it goes, and that a
second process loads what the first compiled."""

import os
import subprocess
import sys

from maskrcnn.compile_cache import cache_dir

HOME = os.path.expanduser("~")


def test_cache_dir_follows_jax_then_ours_then_the_user_cache_folder():
    assert cache_dir({}, None) == os.path.join(HOME, ".cache", "maskrcnn", "jax")
    assert cache_dir({"XDG_CACHE_HOME": "/scratch/c"}, None) == "/scratch/c/maskrcnn/jax"
    assert cache_dir({"MASKRCNN_COMPILE_CACHE": "~/xla"}, None) == os.path.join(HOME, "xla")
    for off in ("off", "0", "False", " none ", ""):
        assert cache_dir({"MASKRCNN_COMPILE_CACHE": off}, None) is None
    # JAX's own setting (JAX_COMPILATION_CACHE_DIR) wins, even over ours turned off.
    assert cache_dir({"MASKRCNN_COMPILE_CACHE": "off"}, "/jax/own") == "/jax/own"


# A program compiled by the first process is loaded by the second: JAX's monitoring events count the
# hits. (JAX caches programs that took over 1 s to compile; the test program is cached whatever it took.)
PROGRAM = """
import jax, jax.numpy as jnp
from maskrcnn import compile_cache
print("dir", compile_cache.enable())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
@jax.jit
def f(x):
    for i in range(20):
        x = jnp.tanh(x @ x.T + i)
    return x
x = jnp.ones((8, 8))
hits.clear()  # only f's compile counts
f(x).block_until_ready()
print("hits", hits.count("/jax/compilation_cache/cache_hits"))
"""

# The folder is exported to the processes a command starts (a local Dask cluster's workers).
CHILD = """
import os, subprocess, sys
from maskrcnn import compile_cache
compile_cache.enable()
print(subprocess.run([sys.executable, "-c", "import jax; print(jax.config.jax_compilation_cache_dir)"],
                     capture_output=True, text=True, check=True).stdout.strip())
"""


def test_a_process_started_by_a_command_uses_the_same_cache(tmp_path):
    env = {**os.environ, "MASKRCNN_COMPILE_CACHE": str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(tmp_path / "cache")


def test_a_second_process_loads_the_first_ones_compiled_program(tmp_path):
    env = {**os.environ, "MASKRCNN_COMPILE_CACHE": str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)

    def run():
        out = subprocess.run(
            [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    first = run()
    assert first[:2] == ["dir", str(tmp_path / "cache")] and first[-2:] == ["hits", "0"]
    assert any(name.startswith("jit_f-") for name in os.listdir(tmp_path / "cache"))
    assert run()[-2:] == ["hits", "1"]
