"""The README's examples run, as written, against the test server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Server

README = ROOT / "README.md"
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text.split("<!-- examples:start -->")[1].split("<!-- examples:end -->")[0]
    return [(lang, code) for lang, code in BLOCK.findall(section)]


def test_readme_has_examples_for_each_client() -> None:
    found = examples()
    assert any("curl" in code for lang, code in found if lang == "bash")
    assert any("tritonclient" in code for lang, code in found if lang == "python")
    assert any("urllib" in code for lang, code in found if lang == "python")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize(("lang", "code"), examples(),
                         ids=[f"block{i}" for i in range(len(examples()))])
def test_readme_example_runs(server: Server, workdir: Path, lang: str, code: str) -> None:
    code = code.replace("127.0.0.1:8000", server.host_port)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c",
                                                                           code]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
