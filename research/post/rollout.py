"""On-policy batches: the batch source of the ppo and grpo tasks, and what they share.

Every `updates_per_rollout` optimizer steps the source takes the next global
batch of prompt indices, samples responses from the current policy (the
sampler, sharded over the mesh's batch axes), scores them on the host (the
reward functions), and runs the task's `process_rollout` in one jit: old and
reference log-probs (and values), then advantages. The rollout's rows, shuffled,
feed `rl.epochs` passes of rollout rows / train.batch_size updates each;
`state.step` still counts updates.

Determinism and resume: rollout r (= state.step // updates_per_rollout) draws its
samples and its shuffle from fold_in(key(train.seed), r), and the prompt
iterator is a grain iterator; checkpoints fall between rollouts (the task
requires train.steps and train.checkpoint_every to be multiples of
updates_per_rollout), so the source's state is the prompt iterator's plus the
adaptive KL coefficient, and a run killed and resumed reproduces an
uninterrupted one bit for bit.

Logged per rollout (averaged over the rollouts of a logging window): reward
(and each reward term), gold_reward, kl (per sequence, k1 at the sampling
temperature), response_length, kl_coef, rollout_seconds, scoring_seconds and
rollout_tokens_per_sec (new tokens per second of sampling).
"""

from __future__ import annotations

import dataclasses
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from research.decode import sample
from research.train.sources import batch_leaf_sharding, replicated_rows

RL_SECTION = dict(
    rollout_prompts=8,  # prompts per rollout (rows = rollout_prompts * samples per prompt)
    num_train_prompts=100_000,  # distinct training prompts, cycled in a reshuffled order
    epochs=1,  # optimizer passes over each rollout, each of (rollout rows / train.batch_size) updates
    clip_eps=0.2,  # the policy ratio's clip range
    kl_coef=0.05,  # beta: the weight of KL(policy || reference)
)


def host(x):
    """A global jax.Array as host numpy, gathered from every process in a multi-host run."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def prompt_iterator(num_prompts: int, rollout_prompts: int, seed: int):
    """Endless global batches of training prompt indices, reshuffled each epoch; checkpointable (grain)."""
    dataset = (
        grain.MapDataset.range(num_prompts).shuffle(seed=seed).repeat().batch(rollout_prompts, drop_remainder=True)
    )
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


class RolloutSource(grain.DatasetIterator):
    """The loop's batch source for RL tasks; see the module docstring. Checkpointed as a grain iterator."""

    def __init__(self, task, prompts: grain.DatasetIterator, mesh):
        super().__init__(prompts)
        self.task, self.mesh = task, mesh
        self.kl_coef = float(task.config.rl.kl_coef)
        self.buffer: list[dict] = []
        self.logged: list[dict] = []
        self._gather = jax.jit(lambda batch, idx: jax.tree.map(lambda x: x[idx], batch))

    @property
    def iterator(self):
        return self  # what checkpoints save: the prompt position and the KL coefficient

    def __next__(self):
        raise TypeError("a RolloutSource makes batches from the train state: call next_batch(state, frozen)")

    def get_state(self) -> dict:
        return {"prompts": self._parent.get_state(), "kl_coef": self.kl_coef}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["prompts"])
        self.kl_coef = float(state["kl_coef"])
        self.buffer = []

    def next_batch(self, state, frozen) -> dict:
        if not self.buffer:
            self.buffer = self.rollout(state.params, frozen, int(jax.device_get(state.step)))
        return self.buffer.pop(0)

    def pop_metrics(self) -> dict:
        if not self.logged:
            return {}
        out = {k: float(np.mean([m[k] for m in self.logged if k in m])) for k in self.logged[-1]}
        self.logged = []
        return out

    def rollout(self, params, frozen, step: int) -> list[dict]:
        """Samples, scores and processes one rollout; returns its minibatches in update order."""
        task, mesh = self.task, self.mesh
        updates = task.updates_per_rollout()
        if step % updates:
            raise ValueError(f"a rollout must start at a multiple of {updates} updates, got step {step}")
        index = step // updates
        rng_sample, rng_shuffle = jax.random.split(jax.random.fold_in(jax.random.key(task.config.train.seed), index))
        prompts = [task.prompt_set.prompt("train", int(i)) for i in next(self._parent)]

        start = time.perf_counter()
        model, variables = task.for_decoding(params, frozen)
        samples = sample(model, variables, task.encode_prompts(prompts), task.rollout_sampling(), rng_sample, mesh=mesh)
        jax.block_until_ready(samples)
        sampled = time.perf_counter()
        rows = [prompts[i] for i in host(samples.prompt_index)]
        total, parts, texts = task.score(
            rows, jax.tree.map(host, samples), max_new_tokens=task.config.policy.max_new_tokens
        )
        gold = np.array([task.prompt_set.gold(r, t) for r, t in zip(rows, texts, strict=True)], np.float32)
        scored = time.perf_counter()
        batch, stats = task.process_rollout(params, frozen, samples, replicated_rows(total, mesh), self.kl_coef)
        stats = {k: float(v) for k, v in jax.device_get(stats).items()}
        new_tokens = int(host(samples.lengths).sum())
        record = {
            "reward": float(total.mean()),
            "gold_reward": float(gold.mean()),
            **{f"reward_{k}": float(v.mean()) for k, v in parts.items()},
            "response_length": new_tokens / len(rows),
            "kl_coef": self.kl_coef,
            "rollout_seconds": sampled - start,
            "scoring_seconds": scored - sampled,
            "rollout_tokens_per_sec": new_tokens / max(sampled - start, 1e-9),
            **stats,
        }
        self.logged.append(record)
        self.kl_coef = task.next_kl_coef(self.kl_coef, stats["kl"])
        return self._minibatches(batch, rng_shuffle)

    def _minibatches(self, batch, rng) -> list[dict]:
        rows = batch["tokens"].shape[0]
        size = self.task.config.train.batch_size
        out = []
        for epoch in range(self.task.config.rl.epochs):
            order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, epoch), rows))
            for start in range(0, rows, size):
                idx = replicated_rows(order[start : start + size], self.mesh)
                gathered = self._gather(batch, idx)
                out.append(jax.tree.map(lambda x: jax.device_put(x, batch_leaf_sharding(self.mesh, x.ndim)), gathered))
        return out


def response_batch(samples) -> dict:
    """The training rows of a rollout: the sampled tokens and which of them the policy is trained on."""
    return {
        "tokens": samples.tokens,
        "positions": samples.positions,
        "segment_ids": samples.segment_ids,
        # Forced tokens (budget forcing, tool output) are the processor's, not the policy's.
        "loss_mask": samples.response_mask & ~samples.forced_mask,
    }


def shift_values(values):
    """Value-head outputs [n, L] -> aligned with the token they precede: out[:, t] = values[:, t - 1].

    token t's log-prob comes from the logits at t - 1, and so does the value of the
    state in which token t was chosen.
    """
    return jnp.concatenate([jnp.zeros_like(values[:, :1]), values[:, :-1]], axis=1)


class RLTask:
    """Mixin for on-policy tasks (ppo, grpo), with research.post.policy.SamplingTask: prompts, a rollout
    source, no eval batches (evaluation samples), and the update count per rollout."""

    samples_per_prompt_key = ""  # the config key of the number of samples per prompt, e.g. "grpo.group_size"

    @classmethod
    def samples_per_prompt(cls, config) -> int:
        section, key = cls.samples_per_prompt_key.split(".")
        return config[section][key]

    @classmethod
    def check_rollout_config(cls, config) -> None:
        r, t = config.rl, config.train
        for key in ("rollout_prompts", "num_train_prompts", "epochs"):
            if r[key] < 1:
                raise ValueError(f"rl.{key}={r[key]} must be >= 1")
        if r.clip_eps <= 0:
            raise ValueError(f"rl.clip_eps={r.clip_eps} must be > 0")
        if r.kl_coef < 0:
            raise ValueError(f"rl.kl_coef={r.kl_coef} must be >= 0")
        if config.policy.temperature <= 0:
            raise ValueError(
                f"policy.temperature={config.policy.temperature} must be > 0: the RL losses divide the logits by it"
            )
        rows = r.rollout_prompts * cls.samples_per_prompt(config)
        if rows % t.batch_size:
            raise ValueError(
                f"train.batch_size={t.batch_size} must divide a rollout's rows: rl.rollout_prompts={r.rollout_prompts}"
                f" x {cls.samples_per_prompt_key}={cls.samples_per_prompt(config)} = {rows}"
            )
        updates = r.epochs * rows // t.batch_size
        for key in ("steps", "checkpoint_every"):
            if t[key] % updates:
                raise ValueError(
                    f"train.{key}={t[key]} must be a multiple of the {updates} updates per rollout (rl.epochs x rows / "
                    "train.batch_size): checkpoints fall between rollouts"
                )
        if r.num_train_prompts < r.rollout_prompts:
            raise ValueError(f"rl.num_train_prompts={r.num_train_prompts} is fewer than rl.rollout_prompts")

    def updates_per_rollout(self) -> int:
        rows = self.config.rl.rollout_prompts * self.samples_per_prompt(self.config)
        return self.config.rl.epochs * rows // self.config.train.batch_size

    def rollout_sampling(self):
        from research.post.policy import sampling_config

        config = sampling_config(self.config, eval=False, stop=self.stop)
        return dataclasses.replace(config, num_samples=self.samples_per_prompt(self.config))

    def train_iterator(self, process_index, process_count):
        del process_index, process_count  # every process draws the same global prompt batch
        r = self.config.rl
        return prompt_iterator(r.num_train_prompts, r.rollout_prompts, self.config.train.seed)

    def batch_source(self, train_iterator, mesh):
        return RolloutSource(self, train_iterator, mesh)

    def eval_batches(self, process_index, process_count):
        return []

    def tokens_per_step(self) -> int:
        return self.config.train.batch_size * (self.prompt_tokens_bound() + self.config.policy.max_new_tokens)

    def prompt_tokens_bound(self) -> int:
        """The prompt bucket rollouts pad to (from a sample of training prompts): for tokens_per_sec."""
        from research.decode.sampler import bucket_length

        longest = max(len(p) for p in self.encode_prompts(self.prompt_set.prompts("train", 16)))
        return bucket_length(longest, self.adapted.config.max_len - self.config.policy.max_new_tokens)

    def next_kl_coef(self, coef: float, measured_kl: float) -> float:
        del measured_kl
        return coef
