"""bench_census reads the operations GPUs run badly out of a lowered program: kinds, sizes, sources."""

import os
import sys

import jax
import jax.numpy as jnp

# The benchmarks are scripts in one folder that import each other by name.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))


def sorting_and_scattering(x, idx):
    order = jnp.sort(x)  # 1 sort of 1,000
    best, _ = jax.lax.top_k(x, 5)  # 1 top-k
    picked = x[idx]  # 1 gather of 7 from 1,000
    added = jnp.zeros(1000).at[idx].add(1.0)  # 1 scatter into 1,000
    summed = jax.lax.fori_loop(0, 3, lambda i, s: s + picked[i], 0.0)  # 1 while loop
    noise = jax.random.uniform(jax.random.PRNGKey(0), (4,))  # threefry: a loop on CPU, counted apart
    return order[0] + best[0] + summed + added.sum() + noise[0]


def test_census_counts_each_kind_with_its_size_and_the_function_it_comes_from():
    from bench_census import RNG_WHILE, census, describe, table

    args = (jnp.arange(1000.0), jnp.arange(7))
    lowered = jax.jit(sorting_and_scattering).lower(*args)
    found = census(lowered)
    assert found["sort"]["count"] == 1 and found["sort"]["largest"] == 1000
    assert found["topk"]["count"] == 1 and found["topk"]["largest"] == 1000
    assert found["scatter"]["count"] == 1 and found["scatter"]["largest"] == 1000
    assert found["while"]["count"] == 1
    if jax.default_backend() == "cpu":
        assert found[RNG_WHILE]["count"] >= 1
    assert found["gather"]["largest"] == 1000  # its biggest operand: the array gathered from
    for kind in ("sort", "topk", "scatter"):
        assert set(found[kind]["sources"]) == {"test_census.sorting_and_scattering"}, found[kind]["sources"]
    assert "conditional" not in found and "custom-call" not in found

    row = describe("toy", jax.jit(sorting_and_scattering), args)
    assert row["flops"] >= 0 and row["bytes"] > 8000  # at least the 1,000 floats read
    line = table([row]).splitlines()[2]
    assert line.startswith("| toy |") and "1 (1,000)" in line
