"""What every preference / RL task shares: the policy, its reference, its prompts and its evaluation.

Roles (as in Tunix's RL cluster), all entries of the train state or of the task's
`frozen` pytree, never new loops:
  actor      the trained policy: a DecoderLM, whole (peft.method none) or adapted
             (LoRA/QLoRA/prefix/adapters over a frozen base), possibly with a value head
  reference  the frozen model the KL is measured against: post.base_workdir's model.
             With PEFT it is the frozen base itself, free; with full fine-tuning a
             frozen copy in `frozen["reference"]`
  reward     a verifier or a learned reward model (research/post/rewards.py)
  rollout    the sampler (research/decode/sampler.py)

Config sections: `post` (where the policy starts and how text is laid out) and
`policy` (how it is sampled, scored and evaluated). A fresh run's policy starts
at post.base_workdir's model (the body loaded, a new head left fresh), unless
train.init_from names another run.

Evaluation is by sampling, not perplexity: `policy.eval_prompts` held-out prompts x
`policy.eval_samples` samples at temperature 1; logged are the mean of each
reward, the total, and KL(policy || reference) per sequence (the sum over
response tokens of log pi - log pi_ref at the sampled tokens, an unbiased
estimate), and the mean response length.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.decode import SamplingConfig, sample
from research.post import prompts as prompts_lib
from research.post.logprobs import token_logprobs
from research.post.rewards import RewardInputs, RewardModel, Rewards
from research.train import runs
from research.train.sharding import LOGICAL_RULES, logical_shardings, make_mesh
from research.train.tasks import Task, get_task, validate_config

POST_SECTION = dict(
    base_workdir="",  # the run post-training starts from (SFT): initial weights, the KL reference, the PEFT base
    template="plain",  # plain | chat: how prompt and response are laid out (research/post/prompts.py)
)
POLICY_SECTION = dict(
    prompts="sentiment",  # sentiment | instructions: the prompt set and its gold reward
    instruction_tasks="arithmetic",  # prompts=instructions: research.data.instructions kinds, comma-separated
    prompt_words=8,  # prompts=sentiment: words per prompt
    max_new_tokens=16,
    min_new_tokens=0,  # = max_new_tokens for the fixed-length continuations of the sentiment task
    temperature=1.0,  # sampling temperature of rollouts; the losses use the same (logits / temperature)
    top_k=0,
    top_p=1.0,
    rewards="gold",  # research/post/rewards.py registry: "name[:weight],..."
    reward_workdir="",  # a train.task='reward' run, for the reward_model reward
    eval_prompts=64,  # held-out prompts per evaluation
    eval_samples=4,  # samples per eval prompt (at temperature 1)
)
TEMPLATE_FIELD = "post.template"


def check_post_config(config) -> None:
    """The adaptation rules every post-training task shares; raises ValueError naming the key."""
    from research.peft.model import PeftSpec

    prompts_lib.check_template(config.post.template, TEMPLATE_FIELD)
    spec = PeftSpec.from_config(config.peft)
    if spec.method == "prefix" and config.model.attention != "dense":
        raise ValueError(f"peft.method='prefix' needs model.attention='dense', got {config.model.attention!r}")
    if config.quant.format != "none" and spec.method != "lora":
        raise ValueError(f"quant.format={config.quant.format!r} quantizes a QLoRA base: it needs peft.method='lora'")
    if spec.method != "none" and config.train.init_from:
        raise ValueError(
            f"peft.method={spec.method!r} trains on the frozen base post.base_workdir; train.init_from must be empty"
        )


def check_policy_config(config) -> None:
    p = config.policy
    prompts_lib.prompt_set(p, 0)  # names policy.prompts / its options when bad
    sampling_config(config, eval=False).validate("policy")
    for key in ("eval_prompts", "eval_samples"):
        if p[key] < 0:
            raise ValueError(f"policy.{key}={p[key]} must be >= 0")
    if p.max_new_tokens >= config.data.seq_len:
        raise ValueError(
            f"policy.max_new_tokens={p.max_new_tokens} leaves no prompt room in data.seq_len={config.data.seq_len}"
        )
    from research.post.rewards import parse_rewards

    names = [name for name, _ in parse_rewards(p.rewards, "policy.rewards")]
    if "reward_model" in names and not p.reward_workdir:
        raise ValueError("policy.rewards uses reward_model: set policy.reward_workdir to a train.task='reward' run")


def sampling_config(config, *, eval: bool, stop=()) -> SamplingConfig:
    p = config.policy
    return SamplingConfig(
        max_new_tokens=p.max_new_tokens,
        min_new_tokens=p.min_new_tokens,
        temperature=1.0 if eval else p.temperature,
        top_k=0 if eval else p.top_k,
        top_p=1.0 if eval else p.top_p,
        num_samples=p.eval_samples if eval else 1,
        stop_tokens=tuple(stop),
    )


class PostTask(Task):
    """Base of the reward, dpo, ppo and grpo tasks: see the module docstring."""

    config_sections = {"post": POST_SECTION}
    adapts_base = True
    reports_perplexity = False  # pair losses and RL objectives are not per-token NLLs
    needs_reference = True  # a frozen reference model (DPO, PPO, GRPO; not a reward model)

    @classmethod
    def base_workdir(cls, config) -> str:
        return config.post.base_workdir

    @classmethod
    def validate_config(cls, config) -> None:
        check_post_config(config)
        if cls.needs_reference and not config.post.base_workdir:
            raise ValueError(
                f"train.task={cls.name!r} needs post.base_workdir: the run the policy starts from and is kept close to"
            )

    def __init__(self, config, tokenizer):
        self.validate_config(config)
        super().__init__(config, tokenizer)
        self.adapted = runs.adapted_model(config, tokenizer.vocab_size)
        self.template = config.post.template
        if config.post.base_workdir:
            runs.check_same_model(config, tokenizer, config.post.base_workdir, field="post.base_workdir")
        jax.eval_shape(self.init_params, jax.random.key(0))  # a bad LoRA target fails here, not in jit

    # --- Parameters. ---
    def init_params(self, rng):
        return self.adapted.init_trainable(rng, runs.init_tokens(self.config))

    def frozen_params(self, mesh):
        """{"base": the PEFT base or None, "reference": the full-fine-tuning reference or None, **extra}."""
        post = self.config.post
        frozen = {"base": runs.frozen_base(self.adapted, self.config, self.tokenizer, post.base_workdir, mesh,
                                           field="post.base_workdir")}  # fmt: skip
        frozen["reference"] = None
        if post.base_workdir and not self.adapted.adapts and self.needs_reference:
            frozen["reference"] = self._base_model_params(mesh)
        return frozen

    def for_decoding(self, params, frozen):
        return self.adapted.for_decoding(params, frozen["base"])

    def _base_model_params(self, mesh):
        """post.base_workdir's model as plain DecoderLM parameters (LoRA merged), without any head."""
        merged = runs.load_run(self.config.post.base_workdir, mesh, field="post.base_workdir").merged_params()
        return {k: v for k, v in merged.items() if k != "scalar_head"}

    def initial_params(self, params, frozen):
        """The policy starts at post.base_workdir's model (body loaded, new heads fresh), or at train.init_from."""
        if self.config.train.init_from or self.adapted.adapts or not self.config.post.base_workdir:
            return super().initial_params(params, frozen)
        source = frozen["reference"]
        if source is None:
            mesh = jax.tree.leaves(params)[0].sharding.mesh
            source = self._base_model_params(mesh)
        return runs.replace_matching(params, source)

    # --- The policy and its reference. ---
    def apply_policy(self, params, frozen, batch, *, head="logits", rng=None):
        return self.adapted.apply(
            {"params": {"trainable": params, "base": frozen["base"]}},
            batch["tokens"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
            head=head,
            rng=rng,
        )

    def reference_logits(self, frozen, batch):
        kwargs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
        if self.adapted.adapts:
            logits = self.adapted.apply_base(frozen["base"], batch["tokens"], **kwargs)
        else:
            logits = self.adapted.model.apply({"params": frozen["reference"]}, batch["tokens"], **kwargs)
        return jax.lax.stop_gradient(logits)

    def tokens_per_step(self) -> int:
        return self.config.train.batch_size * self.config.data.seq_len


class SamplingTask(PostTask):
    """A post-training task that samples its policy: prompts, rewards and evaluation by sampling."""

    config_sections = {"post": POST_SECTION, "policy": POLICY_SECTION}

    @classmethod
    def validate_config(cls, config) -> None:
        super().validate_config(config)
        check_policy_config(config)

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.prompt_set = prompts_lib.prompt_set(config.policy, config.train.seed)
        self.stop = prompts_lib.stop_tokens(tokenizer, self.template)
        self._reward_model = None
        self._rewards = None

    def rewards(self, mesh=None) -> Rewards:
        if self._rewards is None:
            p = self.config.policy
            if p.reward_workdir:
                run = runs.load_run(p.reward_workdir, mesh, field="policy.reward_workdir")
                if run.tokenizer.vocab_size != self.tokenizer.vocab_size:
                    raise ValueError(
                        f"policy.reward_workdir={p.reward_workdir!r} has another tokenizer than the policy"
                    )
                self._reward_model = RewardModel(run, mesh)
            self._rewards = Rewards(p.rewards, prompt_set=self.prompt_set, template=self.template,
                                    reward_model=self._reward_model, field="policy.rewards")  # fmt: skip
        return self._rewards

    def encode_prompts(self, prompts) -> list[list[int]]:
        return [prompts_lib.prompt_tokens(self.tokenizer, self.template, p.text).tolist() for p in prompts]

    def score(self, prompts, samples, *, max_new_tokens) -> tuple[np.ndarray, dict, list[str]]:
        """(total reward [n], {reward name: [n]}, texts) of samples continuing `prompts` (one per row)."""
        host = jax.tree.map(np.asarray, samples)  # (multi-host: research.post.rollout gathers first)
        texts = [
            prompts_lib.response_text(self.tokenizer, self.template, row[host.prompt_len :][:n])
            for row, n in zip(host.tokens, host.lengths, strict=True)
        ]
        inputs = RewardInputs(prompts, texts, host.lengths, host.stopped, max_new_tokens, samples)
        total, parts = self.rewards()(inputs)
        return total, parts, texts

    def evaluate(self, params, frozen) -> dict:
        """Rewards, gold reward, KL to the reference and response length on held-out prompts (see module doc)."""
        p = self.config.policy
        if not p.eval_prompts or not p.eval_samples:
            return {}
        prompts = self.prompt_set.prompts("eval", p.eval_prompts)
        config = sampling_config(self.config, eval=True, stop=self.stop)
        mesh = jax.tree.leaves(params)[0].sharding.mesh
        model, variables = self.for_decoding(params, frozen)
        rng = jax.random.fold_in(jax.random.key(self.config.train.seed), 7_000_003)  # the same draws every eval
        samples = sample(model, variables, self.encode_prompts(prompts), config, rng, mesh=mesh)
        rows = [prompts[i] for i in np.asarray(samples.prompt_index)]
        total, parts, texts = self.score(rows, samples, max_new_tokens=p.max_new_tokens)
        kl, length = _sequence_kl(self, params, frozen, samples)
        gold = np.array([self.prompt_set.gold(r, t) for r, t in zip(rows, texts, strict=True)])
        out = {
            "eval_reward": float(total.mean()),
            "eval_gold_reward": float(gold.mean()),
            "eval_kl": float(kl),
            "eval_response_length": float(length),
        }
        out.update({f"eval_reward_{k}": float(v.mean()) for k, v in parts.items()})
        # Each statistic is averaged over the rows that have it (a mix may hold kinds without it).
        described = [self.prompt_set.describe(r, t) for r, t in zip(rows, texts, strict=True)]
        for key in sorted({k for d in described for k in d}):
            out[f"eval_{key}"] = float(np.mean([d[key] for d in described if key in d]))
        return out


@functools.partial(jax.jit, static_argnames=("task",))
def _sequence_kl(task, params, frozen, samples):
    """(mean over rows of sum_t mask * (log pi - log pi_ref), mean response length) at temperature 1."""
    batch = {"tokens": samples.tokens, "positions": samples.positions, "segment_ids": samples.segment_ids}
    mask = (samples.response_mask & ~samples.forced_mask).astype(jnp.float32)
    logp = token_logprobs(task.apply_policy(params, frozen, batch), samples.tokens)
    ref = token_logprobs(task.reference_logits(frozen, batch), samples.tokens)
    return jnp.mean(jnp.sum((logp - ref) * mask, axis=1)), jnp.mean(samples.lengths.astype(jnp.float32))


def evaluate_start(config, mesh=None) -> dict:
    """A sampling task's evaluation of its starting policy (post.base_workdir's model; KL 0 by construction):
    the step-0 point of an RL curve, on the same prompts and samples as every later evaluation."""
    validate_config(config)
    tokenizer = runs.read_tokenizer(config.post.base_workdir, "post.base_workdir")
    task = get_task(config.train.task)(config, tokenizer)
    mesh = make_mesh(dict(data=-1, fsdp=1, tensor=1)) if mesh is None else mesh
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        frozen = task.frozen_params(mesh)
        boxed = jax.eval_shape(task.init_params, jax.random.key(0))
        params = jax.jit(lambda r: nn.unbox(task.init_params(r)), out_shardings=logical_shardings(boxed, mesh))(
            jax.random.key(config.train.seed)
        )
        return task.evaluate(task.initial_params(params, frozen), frozen)
