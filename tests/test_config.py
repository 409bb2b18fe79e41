import pathlib

import pytest

from research.config import default_config, model_config, parse_arg, validate
from research.experiment import load_config
from research.train.tasks import validate_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_parse_arg_types_and_errors():
    arg = parse_arg("steps=5,size=base,flag", steps=0, size="tiny", flag=False, lr=1.0)
    assert (arg.steps, arg.size, arg.flag, arg.lr) == (5, "base", True, 1.0)
    with pytest.raises(ValueError, match="unknown config argument 'nope'"):
        parse_arg("nope=1", steps=0)
    with pytest.raises(ValueError, match="'steps' must be int"):
        parse_arg("steps=x", steps=0)


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments").glob("*.py")))
def test_every_experiment_config_is_valid(path):
    validate_config(load_config(path))


def test_quickstart_sizes_and_bad_size():
    small = load_config("experiments/quickstart.py:size=small,steps=7")
    assert small.train.steps == 7 and small.model.d_model == 384
    with pytest.raises(ValueError, match="size='huge'"):
        load_config("experiments/quickstart.py:size=huge")


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("model", "d_model", 100, "model.num_heads=6 must divide model.d_model=100"),
        ("model", "num_kv_heads", 4, "model.num_heads=6 must be a multiple of model.num_kv_heads=4"),
        ("model", "ffn", "tanh", "model.ffn='tanh'"),
        ("model", "position", "alibi", "model.position='alibi'"),
        ("model", "max_len", 128, "model.max_len=128 is shorter than data.seq_len=256"),
        ("train", "grad_accum_steps", 3, "train.grad_accum_steps=3 must divide train.batch_size=16"),
        ("train", "steps", 0, "train.steps must be > 0"),
        ("mesh", "fsdp", 0, "mesh.fsdp"),
    ],
)
def test_validate_names_the_key(section, key, value, message):
    c = default_config()
    c[section][key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(c)


def test_unknown_keys_and_wrong_types_are_named():
    c = default_config()
    c.train.stepz = 3
    with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
        validate(c)
    c = default_config()
    with pytest.raises(TypeError):  # ConfigDict itself refuses a str where an int was
        c.train.steps = "ten"


def test_model_config_resolves_defaults():
    m = model_config(default_config(), vocab_size=259)
    assert (m.vocab_size, m.mlp_dim, m.max_len) == (259, 4 * 384, 256)
    c = default_config()
    c.model.vocab_size = 100
    with pytest.raises(ValueError, match="model.vocab_size=100 is smaller"):
        model_config(c, vocab_size=259)
