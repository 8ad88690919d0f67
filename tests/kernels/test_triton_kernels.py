"""The Triton kernel checks (triton_checks.py), in a fresh process under Triton's interpreter:
once torch.compile has run in a process (other tests do), the interpreter fails there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernels_match_their_references_forward_and_backward():
    checks = Path(__file__).with_name("triton_checks.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(checks)],
                          capture_output=True, text=True, env=env, cwd=checks.parents[2], timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
