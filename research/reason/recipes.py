"""The model and SFT recipe the reasoning experiments share (experiments/rl_steps.py, cot_*.py, ...).

A small Llama-style decoder over bytes with the `<think>` tags as added tokens and
learned absolute positions, trained from scratch: at 2 layers x 128 it learns the
addition traces of research/data/reasoning.py within a thousand steps on 2 CPU
cores. Pointer chasing's per-hop lookup was not learned in 600 steps, with RoPE or
learned positions alike (0.27 and 0.16 of hops right, chance 0.1), so the
experiments use addition, sums and Countdown.
"""

from __future__ import annotations

from research.config import swiglu_mlp_dim
from research.data.reasoning import ADDED_TOKENS
from research.train.tasks import task_config


def reasoning_model(task: str, *, layers: int, d_model: int, heads: int, seq_len: int = 128):
    """task_config(task) with the reasoning model: GQA (heads / 2 kv heads), SwiGLU, RMSNorm, learned positions."""
    c = task_config(task)
    c.model.update(num_layers=layers, d_model=d_model, num_heads=heads, num_kv_heads=heads // 2, ffn="swiglu",
                   norm="rmsnorm", mlp_dim=swiglu_mlp_dim(d_model), position="learned")  # fmt: skip
    c.data.update(seq_len=seq_len, added_tokens=ADDED_TOKENS)
    return c


def sft_config(tasks: str, *, layers, d_model, heads, steps, batch, max_new_tokens, seed, seq_len=128,
               eval_examples=100):  # fmt: skip
    """SFT from scratch on research.data.reasoning kind strings: AdamW 2e-3, 20 warmup steps, cosine decay,
    one evaluation and one checkpoint at the end."""
    c = reasoning_model("sft", layers=layers, d_model=d_model, heads=heads, seq_len=seq_len)
    c.sft.update(tasks=tasks, eval_examples=eval_examples, max_new_tokens=max_new_tokens)
    c.train.update(steps=steps, batch_size=batch, eval_every=steps, checkpoint_every=steps, log_every=50,
                   eval_batches=2, seed=seed)  # fmt: skip
    c.optim.update(learning_rate=2e-3, warmup_steps=20, weight_decay=0.0)
    return c
