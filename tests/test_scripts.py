"""The cloud launch scripts (docs/cloud.md) parse, and refuse to run without what they need."""

import pathlib
import subprocess

import pytest

SCRIPTS = sorted((pathlib.Path(__file__).parent.parent / "scripts").glob("*.s*"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_script_parses(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_scripts_refuse_to_run_without_a_command():
    assert len(SCRIPTS) == 2
    for script in SCRIPTS:
        result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 2 and "usage" in result.stderr
