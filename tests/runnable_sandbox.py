"""A sandbox config whose interpreter the sandbox user can run: the venv's Python may sit
under /root, which `nobody` cannot enter on these machines; a system python3 then serves."""

import dataclasses
import shutil
import sys

import pytest

from g2rpo_jax.rewards.sandbox import SandboxConfig, run_python


def runnable(base: SandboxConfig) -> SandboxConfig:
    for python in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        config = dataclasses.replace(base, python=python)
        try:
            run_python("pass", config=config)
        except RuntimeError:
            continue
        return config
    pytest.fail("the sandbox user can run neither this interpreter nor a system python3")
