"""Metrics sinks: DIR/metrics.jsonl (one JSON object per line) and TensorBoard.

Only process 0 writes; every process may call `write`.
"""

import json

import jax
from etils import epath


class MetricsWriter:
    def __init__(self, workdir):
        self._active = jax.process_index() == 0
        self._path = epath.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self._active:
            from tensorboardX import SummaryWriter  # TensorBoard events without TensorFlow

            self._tb = SummaryWriter(str(epath.Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self._active:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(value):
    value = jax.device_get(value)
    return value.item() if hasattr(value, "item") else value


def read_metrics(workdir) -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
