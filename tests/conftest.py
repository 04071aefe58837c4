import os

os.environ.setdefault("KERAS_BACKEND", "jax")
# Tests run a handful of steps of many small programs, so XLA's compile time dominates them: LLVM's
# optimisation level 0 compiles the CPU code about 40% faster (tests/train/test_step.py: 34 s against
# 56 s). It changes how fast the code runs, not what it computes; benchmarks never set it.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# The command line turns on JAX's persistent compilation cache (maskrcnn.compile_cache); tests that call
# it in-process must neither read nor fill the user's cache, and tests/test_compile_cache.py tests it.
os.environ["MASKRCNN_COMPILE_CACHE"] = "off"
