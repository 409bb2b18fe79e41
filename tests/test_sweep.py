import pytest

from research.config import default_config
from research.experiment import apply_overrides, load_config, load_experiment, run_name
from research.train.tasks import validate_config


def test_run_names_and_overrides():
    overrides = {"data.tokenizer": "bpe", "data.vocab_size": 512}
    assert run_name(overrides) == "tokenizer=bpe,vocab_size=512"
    assert run_name({}) == "base"
    config = apply_overrides(default_config(), overrides)
    assert (config.data.tokenizer, config.data.vocab_size) == ("bpe", 512)
    with pytest.raises(ValueError, match="'data.vocab'"):
        apply_overrides(default_config(), {"data.vocab": 3})


def test_tokenizer_experiment_sweep_is_valid():
    experiment, arg = load_experiment("experiments/tokenizers.py:steps=5")
    base = load_config("experiments/tokenizers.py:steps=5")
    sweep = experiment.get_sweep(arg)
    kinds = {s["data.tokenizer"] for s in sweep}
    assert kinds == {"byte", "char", "word", "bpe", "wordpiece", "unigram"}
    for overrides in sweep:
        validate_config(apply_overrides(base, overrides))
