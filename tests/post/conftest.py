"""A tiny base LM on the toy sentiment language, trained once per session, and configs of the post tasks on it."""

import pytest

from research.train.loop import train
from research.train.tasks import task_config


def tiny(config, data_dir, steps):
    """2 layers x d_model 32, word tokenizer over the toy language, rows of 32 tokens."""
    config.model.update(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, ffn="swiglu", norm="rmsnorm")
    config.data.update(name="toy_sentiment", data_dir=data_dir, tokenizer="word", vocab_size=64, seq_len=32,
                       tokenizer_sample_bytes=100_000)  # fmt: skip
    config.train.update(
        steps=steps, batch_size=8, eval_every=steps, checkpoint_every=steps, log_every=1, eval_batches=1
    )
    config.optim.update(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0)
    return config


def post_config(task, data_dir, base, steps=2):
    """A `task` run on `base`: 4-word prompts, 6-token continuations, tiny pair and eval sets."""
    c = tiny(task_config(task), data_dir, steps)
    c.post.base_workdir = str(base)
    if "preference" in c:
        c.preference.update(num_train_pairs=64, num_eval_pairs=16, prompt_words=4, continuation_words=6)
    if "policy" in c:
        c.policy.update(prompt_words=4, max_new_tokens=6, min_new_tokens=6, eval_prompts=4, eval_samples=2)
    if task == "ppo":
        c.rl.rollout_prompts = 8  # one sample each: 8 rows, one update per rollout
    if task == "grpo":
        c.rl.rollout_prompts, c.grpo.group_size = 8, 2  # 16 rows: two updates of 8 per rollout
    return c


@pytest.fixture(scope="session")
def sentiment_data_dir(tmp_path_factory):
    from research.data import DataSpec, load_sources

    path = str(tmp_path_factory.mktemp("tfds_sentiment"))
    spec = DataSpec("toy_sentiment", path, "text", "train", "validation", 32, 8, 1, 0)
    load_sources(spec)
    return path


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, sentiment_data_dir):
    """A base LM of the toy language (30 steps: continuations already follow the chain somewhat)."""
    workdir = tmp_path_factory.mktemp("post") / "base"
    train(tiny(task_config("lm"), sentiment_data_dir, 30), workdir)
    return workdir
