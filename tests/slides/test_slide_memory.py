"""Peak memory does not grow with the slide: a 10,000 px and a 50,000 px square slide, the same tissue.

Each slide runs in a child process of its own, which reports its peak resident memory (ru_maxrss). The
slides are glass with three 1,024 px tissue patches at the same places; the larger has 25 times the
tiles, all but the same 140 of them background. Measured numbers: experiments/results/slide.md.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.slides.helpers import draw_tissue, write_sparse_slide

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = """
import json, resource, sys
from maskrcnn.slides import SlideOptions, TileModel, segment_slide
from tests.slides.helpers import CLASS_NAMES, PixelOracle
options = SlideOptions(progress=False, labels=sys.argv[4] == "labels")
s = segment_slide(sys.argv[1], sys.argv[2], sys.argv[3], TileModel(PixelOracle(), CLASS_NAMES), options)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": peak, **{k: s[k] for k in ("tiles", "tiles_read", "nuclei")}}))
"""


def peak_memory(path, out, labels=False):
    """Runs one slide in a child process; returns its peak RSS (MiB) and summary counts."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, path, "s", out, "labels" if labels else "-"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sparse_slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(0)
    patches = [
        (y, x, draw_tissue(rng, 1024, 1024, 300, margin=2)[0])
        for y, x in ((1000, 1000), (3000, 6000), (7000, 2500))
    ]
    paths = {}
    for size in (10_000, 50_000):
        paths[size] = str(folder / f"sparse{size}.tif")
        write_sparse_slide(paths[size], size, patches, levels=6)
    return folder, paths


@pytest.mark.parametrize("labels", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_peak_memory_does_not_grow_with_the_slide(sparse_slides, labels):
    folder, paths = sparse_slides
    small = peak_memory(paths[10_000], str(folder / f"out-small-{labels}"), labels)
    large = peak_memory(paths[50_000], str(folder / f"out-large-{labels}"), labels)
    assert large["tiles"] > 20 * small["tiles"]
    assert large["tiles_read"] == small["tiles_read"] and large["nuclei"] == small["nuclei"] == 900
    assert large["peak_mb"] <= 1.10 * small["peak_mb"], (small, large)
