r"""Run an experiment file's sweep: one training run per variant, then its analysis.

  python -m research.sweep --config experiments/tokenizers.py[:arg] --workdir DIR [--config.train.steps=N]

The experiment file provides `get_config(arg)` (the base config, which
`--config.*` flags override), `get_sweep(arg)` (a list of {dotted key: value}
overrides, one per run) and optionally `analyze(workdir, runs, arg)` (writes the
results table and plots). Each run trains in DIR/<run name>; rerunning resumes
unfinished runs and skips finished ones.
"""

import importlib.util
import sys

from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file: path.py[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "One sub-directory per run, plus the analysis.")
flags.mark_flags_as_required(["config", "workdir"])


def run_name(overrides: dict) -> str:
    """{'data.tokenizer': 'bpe', 'data.vocab_size': 512} -> 'tokenizer=bpe,vocab_size=512'."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides.items()) or "base"


def apply_overrides(config, overrides: dict):
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        target = config
        for part in filter(None, section.split(".")):
            target = target[part]
        if name not in target:
            raise ValueError(f"sweep override {key!r} is not a config key")
        target[name] = value
    return config


def load_experiment(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, arg or None


def run_sweep(base_config, experiment, arg, workdir) -> list[dict]:
    from research.train.loop import train

    workdir = epath.Path(workdir)
    runs = []
    for overrides in experiment.get_sweep(arg):
        name = run_name(overrides)
        run_dir = workdir / name
        logging.warning("sweep run %s -> %s", name, run_dir)
        train(apply_overrides(base_config, overrides), run_dir)
        runs.append({"name": name, "overrides": overrides, "workdir": run_dir})
    if hasattr(experiment, "analyze"):
        experiment.analyze(workdir, runs, arg)
    return runs


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    experiment, arg = load_experiment(flags.FLAGS["config"].config_filename)
    if not hasattr(experiment, "get_sweep"):
        print(f"error: {flags.FLAGS['config'].config_filename} defines no get_sweep(arg)", file=sys.stderr)
        sys.exit(2)
    try:
        run_sweep(_CONFIG.value, experiment, arg, _WORKDIR.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
