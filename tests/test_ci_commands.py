"""README.md's two set-up commands are what .ci/run runs, and they build without a second torch."""

import re
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands():
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print-commands"], check=True, capture_output=True, text=True
    ).stdout
    install, test = out.splitlines()
    steps = install.split(" && ")
    assert steps[0] == "python -m pip install -r requirements.txt"
    assert any(s.startswith("python -m pip install --no-build-isolation .") for s in steps)
    assert steps[-1] == "python -m nytorch"
    assert test.startswith("python -m pytest")


def test_requirements_pin_the_running_torch():
    text = (ROOT / "requirements.txt").read_text()
    pins = re.findall(r"^torch==(\S+)", text, flags=re.M)
    assert pins == [torch.__version__.split("+")[0]]
