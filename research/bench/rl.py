r"""RL throughput: the sampler as a rollout engine, and one GRPO step broken into its parts.

  python -m research.bench.rl --layers 4 --d_model 128 --prompts 4 --group 8 --new_tokens 64

1. Rollout throughput: `research.decode.sample` drawing `group` samples of each of
   `prompts` prompts (prefill once per prompt, temperature 1), against
   `research.decode.generate` on the same rows (prompts x group, greedy): new tokens
   per second, best of --repeats.
2. A GRPO step (train.task=grpo through its task code: the rollout source's pieces
   and the jitted train step) on a random model of that shape, byte tokenizer,
   instruction prompts with the exact-match verifier: seconds of rollout (sampling),
   scoring (decode + reward functions on the host), processing (old/reference
   log-probs and advantages, one jit) and update (one optimizer step over the
   rollout's rows), median over --steps timed steps after one untimed.
3. With --peer (default) and the `trl` package: Hugging Face TRL's GRPOTrainer at the same
   shape (research/bench/trl_peer.py), its seconds per step in this process.

Every response is exactly new_tokens long (min_new_tokens = max_new_tokens, no stop),
so all three do the same work. Last line: one JSON object with grpo_seconds_per_step,
rollout_tokens_per_sec and generate_tokens_per_sec (and the parts, and the peer's).
"""

import dataclasses
import functools
import statistics
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags

from research.bench import common
from research.config import swiglu_mlp_dim
from research.decode import generate, sample
from research.tokenizers import ByteTokenizer
from research.train import checkpoint
from research.train.sharding import LOGICAL_RULES, make_mesh
from research.train.sources import to_global
from research.train.state import create_train_state, make_optimizer
from research.train.step import train_step
from research.train.tasks import get_task, task_config

# research.bench.common's shape flags, at this benchmark's default shape.
for _name, _value in (("layers", 4), ("d_model", 128), ("heads", 4)):
    flags.FLAGS.set_default(_name, _value)
flags.DEFINE_integer("prompts", 4, "Prompts per rollout.")
flags.DEFINE_integer("group", 8, "Samples per prompt (GRPO's G).")
flags.DEFINE_integer("new_tokens", 64, "Tokens per response.")
flags.DEFINE_integer("steps", 5, "Timed GRPO steps (after one untimed).")
flags.DEFINE_integer("repeats", 5, "Timed rollouts / generate calls, taking turns (best of each is reported).")


def grpo_config(base_workdir: str):
    f = flags.FLAGS
    c = task_config("grpo")
    c.model.update(num_layers=f.layers, d_model=f.d_model, num_heads=f.heads, num_kv_heads=f.heads, ffn="swiglu",
                   norm="rmsnorm", mlp_dim=swiglu_mlp_dim(f.d_model))  # fmt: skip
    c.data.seq_len = 32 + f.new_tokens
    c.post.update(base_workdir=base_workdir, template="chat")
    c.policy.update(prompts="instructions", instruction_tasks="reverse", max_new_tokens=f.new_tokens,
                    min_new_tokens=f.new_tokens, rewards="exact_match", eval_prompts=0)  # fmt: skip
    c.rl.rollout_prompts = f.prompts
    c.grpo.group_size = f.group
    c.train.update(batch_size=f.prompts * f.group, steps=100, checkpoint_every=100)
    return c


def write_random_base(workdir, config) -> None:
    """A workdir holding a random model of `config`'s shape (what post.base_workdir reads)."""
    lm = task_config("lm")
    lm.model.update(config.model.to_dict())
    lm.data.seq_len = config.data.seq_len
    task = get_task("lm")(lm, ByteTokenizer())
    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        state, _ = create_train_state(task.model, make_optimizer(lm.optim, 10), mesh, jax.random.key(0))
    manager = checkpoint.make_manager(workdir, keep=1, async_checkpointing=False)
    manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
    manager.close()
    checkpoint.save_config(workdir, lm)
    ByteTokenizer().save(f"{workdir}/tokenizer.json")


def _best_in_turns(fns, repeats) -> list[float]:
    """Best time of each function over `repeats` rounds in which they take turns (after one compiling call)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main(argv):
    del argv
    f = flags.FLAGS
    with tempfile.TemporaryDirectory() as tmp:
        config = grpo_config(f"{tmp}/base")
        write_random_base(f"{tmp}/base", config)
        task = get_task("grpo")(config, ByteTokenizer())
        mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1))
        with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
            record = _measure(task, config, mesh)
    if f.peer:
        from research.bench import trl_peer

        if trl_peer.trl_available():
            peer = trl_peer.trl_grpo_seconds_per_step(layers=f.layers, d_model=f.d_model, heads=f.heads,
                                                      prompts=f.prompts, group=f.group, new_tokens=f.new_tokens,
                                                      steps=f.steps)  # fmt: skip
            record["peer_grpo_seconds_per_step"] = peer
            record["speedup_vs_peer"] = peer / record["grpo_seconds_per_step"]
        else:
            print("peer skipped: install the `peers` extra (pip install -e .[peers]) for TRL's GRPOTrainer")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    common.print_table([{k: v for k, v in record.items() if not isinstance(v, dict) and v is not None}])
    common.print_json(record)


def _measure(task, config, mesh) -> dict:
    f = flags.FLAGS
    frozen = task.frozen_params(mesh)
    state, _ = create_train_state(task.model, make_optimizer(config.optim, 100), mesh, jax.random.key(0),
                                  init_fn=task.init_params)  # fmt: skip
    state = state.replace(params=task.initial_params(state.params, frozen))
    prompts = task.prompt_set.prompts("train", f.prompts)
    encoded = task.encode_prompts(prompts)
    rows = f.prompts * f.group
    sampling = task.rollout_sampling()

    # 1. Rollout throughput vs generate at the same rows and length.
    model, variables = task.for_decoding(state.params, frozen)
    rollout = lambda: jax.block_until_ready(sample(model, variables, encoded, sampling, jax.random.key(1)).tokens)  # noqa: E731
    repeated = [p for p in encoded for _ in range(f.group)]
    greedy = lambda: generate(model, variables, repeated, max_new_tokens=f.new_tokens)  # noqa: E731
    rollout_time, generate_time = _best_in_turns((rollout, greedy), f.repeats)
    rollout_tps, generate_tps = rows * f.new_tokens / rollout_time, rows * f.new_tokens / generate_time

    # 2. GRPO steps: the rollout source's pieces, timed apart.
    step = jax.jit(functools.partial(train_step, grad_accum_steps=1, learning_rate_fn=lambda s: 1e-4,
                                     loss_fn=task.loss, seed=config.train.seed), donate_argnums=0)  # fmt: skip
    parts = {"rollout": [], "scoring": [], "processing": [], "update": []}
    for i in range(1 + f.steps):
        t0 = time.perf_counter()
        model, variables = task.for_decoding(state.params, frozen)
        samples = sample(model, variables, encoded, sampling, jax.random.key(10 + i), mesh=mesh)
        jax.block_until_ready(samples)
        t1 = time.perf_counter()
        rows_prompts = [prompts[j] for j in np.asarray(samples.prompt_index)]
        total, _, _ = task.score(rows_prompts, samples, max_new_tokens=f.new_tokens)
        t2 = time.perf_counter()
        batch, _ = task.process_rollout(state.params, frozen, samples, to_global({"r": total}, mesh)["r"], 0.0)
        jax.block_until_ready(batch)
        t3 = time.perf_counter()
        state, metrics = step(state, batch, frozen)
        jax.block_until_ready(metrics)
        t4 = time.perf_counter()
        if i:  # the first step compiles
            for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[key].append(seconds)
    median = {k: statistics.median(v) for k, v in parts.items()}
    return {
        "grpo_seconds_per_step": sum(median.values()),
        **{f"{k}_seconds": v for k, v in median.items()},
        "rollout_tokens_per_sec": rollout_tps,
        "generate_tokens_per_sec": generate_tps,
        "rollout_vs_generate": rollout_tps / generate_tps,
        "shape": dataclasses.asdict(task.adapted.config) | {"prompts": f.prompts, "group": f.group},
    }


if __name__ == "__main__":
    app.run(main)
