r"""Train a model, then print samples.

  python -m research.main --config experiments/quickstart.py[:key=value,...] \
      --config.train.steps=200 --workdir DIR

Rerunning with the same --workdir resumes from its newest checkpoint. For
several processes (multi-host), see research/launch.py.
"""

import json

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from research.launch import clean_exit, maybe_initialize_distributed, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file: path.py[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard, tokenizer.")
_SAMPLE = flags.DEFINE_bool("sample", True, "Print config.sample.num_samples samples after training.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
    maybe_initialize_distributed()
    from research.train.loop import train  # after distributed init: the loop queries devices

    config = _CONFIG.value
    with clean_exit():
        last = train(config, _WORKDIR.value)
    if jax.process_index() == 0:
        print(json.dumps({"final": last}))
    from research.train.tasks import get_task

    can_sample = get_task(config.train.task).samples_after_training
    if _SAMPLE.value and can_sample and jax.process_index() == 0 and jax.process_count() == 1:
        from research.sample import print_samples

        s = config.sample
        print_samples(
            _WORKDIR.value,
            [s.prompt] * s.num_samples,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            seed=config.train.seed,
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
