"""Every Colab notebook runs, top to bottom, at tiny scale (NOTEBOOK_SCALE=tiny), and is committed
without outputs. Each runs as one script in a fresh interpreter, as a kernel would run its cells;
shell lines (!pip ...) are Colab's setup and are skipped."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

COLAB = pathlib.Path(__file__).parent.parent / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))


def _script(notebook) -> str:
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    lines = [line for c in cells for line in "".join(c["source"]).splitlines() + [""]]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("!", "%")))


def test_every_chapter_has_a_notebook():
    chapters = {"quickstart", "tokens_and_embeddings", "attention", "hugging_face", "fine_tuning_and_compression",
                "moe_and_sharding", "applications"}  # fmt: skip
    assert {p.stem for p in NOTEBOOKS} >= chapters


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_notebook_is_stripped_and_runs_at_tiny_scale(notebook, tmp_path):
    cells = json.loads(notebook.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    script = tmp_path / f"{notebook.stem}.py"
    script.write_text(_script(notebook))
    env = dict(os.environ, NOTEBOOK_SCALE="tiny", TFDS_DATA_DIR=str(tmp_path / "tfds"), MPLBACKEND="Agg")
    env.pop("XLA_FLAGS", None)  # one device, as on a Colab runtime
    result = subprocess.run([sys.executable, str(script)], cwd=COLAB.parent, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
