"""The examples in ``examples/`` run in their ``--quick`` mode, print a test
accuracy and write their plot (they need scikit-learn, which ships the digits
data, and matplotlib for the plots: both in requirements.txt, so a missing
one fails here instead of skipping)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib  # noqa: F401  (requirements.txt; the plots)
import pytest
import sklearn  # noqa: F401  (requirements.txt; the digits data)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["pso_digits.py", "es_digits.py", "soup_digits.py"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_quick_mode(name, tmp_path):
    plot = tmp_path / "plot.png"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--quick", "--threads", "1", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    accs = [float(a) for a in re.findall(r"test accuracy (\d+\.\d)%", r.stdout)]
    assert accs, r.stdout
    assert max(accs) > 30.0, r.stdout  # well above chance (10%) even in a few seconds
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
