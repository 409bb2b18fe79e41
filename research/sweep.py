r"""Run an experiment file: its stages and sweeps, one training run each, then its analysis.

  python -m research.sweep --config experiments/preference_frontier.py[:arg] --workdir DIR \
      [--config.train.steps=N] [--only STAGE] [--seeds K]

See research/experiment.py for what an experiment file declares (get_config,
get_sweep or get_stages, analyze). Each run trains in its own sub-directory of
DIR; rerunning skips finished runs and resumes unfinished ones. `--config.*`
overrides (keys of get_config(arg)'s config) apply to every run that has the
key. `--seeds K` (default 3) runs the whole experiment K times, train.seed + 0 ..
K-1, in DIR/seed=<i>, and merges the seeds' results into DIR/results.{json,md} as
mean ± std; `--seeds 1` runs it once, in DIR itself (the layout before seeds).
Multi-host: the same flags as research.main (research/launch.py), on every host.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from research.launch import clean_exit, config_overrides, maybe_initialize_distributed, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file: path.py[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "One sub-directory per run, plus the analysis.")
_ONLY = flags.DEFINE_string("only", "", "Run just this stage (its inputs must be finished); no analysis.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Run every variant over this many seeds (train.seed + 0 .. K-1); 1: once.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    maybe_initialize_distributed()
    from research.experiment import load_experiment, run_experiment  # after distributed init

    with clean_exit():
        experiment, arg = load_experiment(flags.FLAGS["config"].config_filename)
        run_experiment(experiment, arg, _WORKDIR.value, config_overrides(), only=_ONLY.value, seeds=_SEEDS.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
