"""Every measured figure the README quotes has a results file behind it (experiments/results/)."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A measured figure: a decimal number with a unit of time, size or ratio (0.80x, 17.9 s, 51.8 min, 180
# MiB, 45.2%), or a decimal score after a metric's name (bPQ 0.377, recall 0.449). Integers, settings
# (0.25 um/px, 1e-4) and magnifications (40x) are not figures.
UNIT = re.compile(r"(?<![\w.\-/=])(\d+\.\d+)\s?(?:x|s|ms|min|h|MiB|GiB|MB|GB|%)(?![\w/])")
METRIC = re.compile(r"\b(?:bPQ|mPQ|PQ|DQ|SQ|AJI|recall|precision|mAP@0\.5|AP)\s+(?:of\s+)?(0\.\d{2,})\b")


def readme_figures(text: str) -> set[str]:
    """The figures of ``text``, code blocks left out (commands and configs hold settings, not results)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return {m.group(1) for pattern in (UNIT, METRIC) for m in pattern.finditer(prose)}


def test_the_patterns_find_figures_and_skip_settings():
    text = "bPQ 0.377 at 0.80x its time, 17.9 s cold; 0.25 um/px, 40x scans, lr 1e-4, `--scale 2.5x`"
    assert readme_figures(text + "\n```\nmake train 1.5x\n```") == {"0.377", "0.80", "17.9", "2.5"}


def test_every_readme_figure_is_in_a_results_file():
    readme = open(os.path.join(ROOT, "README.md")).read()
    results = "\n".join(
        open(p).read() for p in glob.glob(os.path.join(ROOT, "experiments", "results", "*.md"))
    )
    missing = sorted(
        f for f in readme_figures(readme) if not re.search(rf"(?<![\d.]){re.escape(f)}(?!\d)", results)
    )
    assert not missing, f"README figures that no file in experiments/results holds: {missing}"


def test_every_results_file_the_readme_links_exists():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for link in re.findall(r"\]\((experiments/results/[^)]+)\)", readme):
        assert os.path.exists(os.path.join(ROOT, link)), link
