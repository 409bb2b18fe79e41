"""Metrics sinks: DIR/metrics.jsonl, always, plus the trackers named in train.trackers.

metrics.jsonl (one JSON object per line) is what read_metrics, the experiments'
analyses and resumption read. Trackers get the numeric metrics of each record:
`tensorboard` (DIR/tensorboard, through tensorboardX, no TensorFlow) and `wandb`
(the `wandb` extra; resuming a workdir continues its W&B run, whose id is kept in
DIR/wandb_id.txt; WANDB_MODE=offline needs no account, WANDB_PROJECT names the
project). A tracker is one class with write(step, scalars), close() and the
`package` it needs, registered in TRACKERS. Only process 0 writes; every process may call `write`.
"""

import importlib.util
import json
import os
import uuid

import jax
from etils import epath


class TensorBoard:
    package = "tensorboardX"  # what tracker_names checks is installed

    def __init__(self, workdir: epath.Path, config):
        del config
        from tensorboardX import SummaryWriter  # TensorBoard events without TensorFlow

        self._writer = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandB:
    package = "wandb"

    def __init__(self, workdir: epath.Path, config):
        import wandb

        id_file = workdir / "wandb_id.txt"
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "research"),
            name=workdir.name,
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(workdir),
            config=config.to_dict() if config is not None else None,
        )

    def write(self, step: int, scalars: dict) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB}


def tracker_names(trackers: str, field: str = "train.trackers") -> list[str]:
    """'tensorboard,wandb' -> its names; an unknown name, or one whose package is missing, is an error."""
    names = [n.strip() for n in trackers.split(",") if n.strip()]
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"{field}={trackers!r}: {name!r} is not a tracker; choose from {sorted(TRACKERS)}")
        package = TRACKERS[name].package
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"{field}={trackers!r}: {name!r} needs the {package} package (pip install -e '.[{name}]')")
    return names


class MetricsWriter:
    """metrics.jsonl and the config's trackers (train.trackers; config None: TensorBoard)."""

    def __init__(self, workdir, config=None):
        self._active = jax.process_index() == 0
        workdir = epath.Path(workdir)
        self._path = workdir / "metrics.jsonl"
        names = tracker_names(config.train.trackers) if config is not None else ["tensorboard"]
        self._trackers = [TRACKERS[name](workdir, config) for name in names] if self._active else []

    def write(self, step: int, metrics: dict) -> None:
        if not self._active:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {
            k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        for tracker in self._trackers:
            tracker.write(int(step), scalars)

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()


def _plain(value):
    value = jax.device_get(value)
    return value.item() if hasattr(value, "item") else value


def read_metrics(workdir) -> list[dict]:
    path = epath.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
