"""Supervised fine-tuning on instructions ("sft"), with the whole model or a PEFT method trained.

    python -m research.main --config experiments/lora_rank.py --workdir DIR \
        --config.sft.base_workdir=PRETRAINED --config.peft.method=lora --config.peft.rank=8

Data: research.data.instructions (prompt/response pairs rendered with the chat
template, packed whole, loss on response tokens only). Evaluation adds exact
match of greedy generations (research.decode) on held-out prompts, overall and
per task kind.

What is trained (config.peft.method):
- "none": every parameter. The pretrained weights come in through the loop's
  `train.init_from`, which must then name sft.base_workdir.
- "lora" / "prefix" / "adapter": only the method's tree is the run's params
  (optimizer state and checkpoints hold nothing else); the base is `frozen`,
  read from sft.base_workdir's newest checkpoint at every start, resume
  included (research/train/runs.py; a PEFT base run is merged first). The
  base's config must describe the same model as this run's: any difference is
  an error naming the field. The workdir's config.json keeps the reference
  (sft.base_workdir) and resuming with another one is refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.data import instructions, reasoning
from research.decode import generate
from research.peft import model as peft_lib
from research.train import runs
from research.train.step import apply_with_aux, next_token_targets, objective_sums
from research.train.tasks import Task, register_task

SFT_SECTION = dict(
    base_workdir="",  # the pretrained run fine-tuned (newest checkpoint); "" = a fresh random base
    tasks="arithmetic,reverse,uppercase,sort,code",  # research.data.instructions kinds, comma-separated
    num_train_examples=50_000,  # distinct training examples, cycled and reshuffled each epoch
    eval_examples=100,  # held-out prompts whose greedy generation is checked by exact match
    max_new_tokens=16,  # generation budget per eval prompt
)


def _kinds(tasks: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in tasks.split(",") if k.strip())


def sft_targets(batch):
    """(targets, weights): next-token targets of the same example, weighted only where the target
    is a response token or [EOS] (loss_mask of the target), never a prompt token."""
    targets, weights = next_token_targets(batch)
    return targets, weights * jnp.roll(batch["loss_mask"], -1, axis=1).astype(weights.dtype)


@register_task("sft")
class SFTTask(Task):
    """Instruction tuning; see the module docstring."""

    config_sections = {"sft": SFT_SECTION}
    resume_must_match = ("peft", "quant", "sft.base_workdir", "sft.tasks", "sft.num_train_examples")
    adapts_base = True

    @classmethod
    def validate_config(cls, config) -> None:
        spec = peft_lib.PeftSpec.from_config(config.peft)
        s = config.sft
        instructions.check_kinds(_kinds(s.tasks))
        for key in ("num_train_examples", "eval_examples", "max_new_tokens"):
            if s[key] < (0 if key == "eval_examples" else 1):
                raise ValueError(f"sft.{key}={s[key]} must be positive")
        if spec.method == "prefix" and config.model.attention != "dense":
            raise ValueError(
                f"peft.method='prefix' needs an attention variant that takes an explicit mask; "
                f"model.attention={config.model.attention!r}, use 'dense'"
            )
        init_from = config.train.init_from
        if spec.method == "none" and s.base_workdir and init_from != s.base_workdir:
            raise ValueError(
                f"peft.method='none' trains every parameter, loaded by train.init_from: set train.init_from="
                f"{s.base_workdir!r} (sft.base_workdir), got {init_from!r}"
            )
        if config.quant.format != "none" and spec.method != "lora":
            raise ValueError(
                f"quant.format={config.quant.format!r} quantizes the frozen base of QLoRA: it needs "
                f"peft.method='lora', got {spec.method!r}"
            )
        if spec.method != "none" and init_from:
            raise ValueError(
                f"peft.method={spec.method!r} keeps the base frozen, read from sft.base_workdir; "
                f"train.init_from={init_from!r} must be empty"
            )

    @classmethod
    def base_workdir(cls, config) -> str:
        return config.sft.base_workdir

    def __init__(self, config, tokenizer):
        self.validate_config(config)
        super().__init__(config, tokenizer)
        self.adapted = runs.adapted_model(config, tokenizer.vocab_size)
        t = config.train
        num_shards = jax.process_count() if config.data.num_shards == -1 else config.data.num_shards
        self.data = instructions.InstructionSpec(
            kinds=_kinds(config.sft.tasks),
            num_train_examples=config.sft.num_train_examples,
            seq_len=config.data.seq_len,
            global_batch_size=t.batch_size,
            num_shards=num_shards,
            seed=t.seed,
        )
        if config.sft.base_workdir:
            runs.check_same_model(config, tokenizer, config.sft.base_workdir, field="sft.base_workdir")
        jax.eval_shape(self.init_params, jax.random.key(0))  # a bad LoRA target or rank fails here, not in jit

    # --- What to train. ---
    def init_params(self, rng):
        return self.adapted.init_trainable(rng, runs.init_tokens(self.config))

    def frozen_params(self, mesh):
        """The base: sft.base_workdir's newest params, or (no base) a fresh init from train.seed + 1."""
        return runs.frozen_base(
            self.adapted, self.config, self.tokenizer, self.config.sft.base_workdir, mesh, field="sft.base_workdir"
        )

    # --- On what. ---
    def train_iterator(self, process_index: int, process_count: int):
        return instructions.make_train_iterator(
            self.data, self.tokenizer, process_index=process_index, process_count=process_count
        )

    def eval_batches(self, process_index: int, process_count: int) -> list[dict]:
        return instructions.make_eval_batches(
            self.data,
            self.tokenizer,
            num_batches=self.config.train.eval_batches,
            process_index=process_index,
            process_count=process_count,
            num_examples=max(self.config.sft.eval_examples, 1),
        )

    # --- Towards what. ---
    def _token_losses(self, params, frozen, batch, rng):
        logits, aux, metrics = apply_with_aux(
            self.adapted.apply,
            {"params": {"trainable": params, "base": frozen}},
            batch["tokens"],
            positions=batch["positions"],
            segment_ids=batch["segment_ids"],
            rng=rng,
        )
        targets, weights = sft_targets(batch)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets), weights, aux, metrics

    def loss(self, params, frozen, batch, rng):
        losses, weights, aux, metrics = self._token_losses(params, frozen, batch, rng)
        return objective_sums(jnp.sum(losses * weights), jnp.sum(weights), aux, metrics)

    def eval_sums(self, params, frozen, batch) -> dict:
        losses, weights, _, _ = self._token_losses(params, frozen, batch, None)
        return {"loss_sum": jnp.sum(losses * weights), "count": jnp.sum(weights)}

    def evaluate(self, params, frozen) -> dict:
        """Exact match of greedy generations on sft.eval_examples held-out prompts, overall and per kind."""
        n = self.config.sft.eval_examples
        if n == 0:
            return {}
        examples = instructions.eval_examples(self.data, n)
        outputs = self.generate(params, frozen, [e.prompt for e in examples])
        hits = np.array([instructions.exact_match(e, o) for e, o in zip(examples, outputs, strict=True)])
        out = {"exact_match": float(hits.mean())}
        for kind in self.data.kinds:
            mine = [h for h, e in zip(hits, examples, strict=True) if e.kind == kind]
            if mine:
                out[f"exact_match_{instructions.metric_name(kind)}"] = float(np.mean(mine))
        thinks = [reasoning.parse(o).thinks for o, e in zip(outputs, examples, strict=True)
                  if reasoning.is_reasoning_kind(e.kind)]  # fmt: skip
        if thinks:
            out["thinks"] = float(np.mean(thinks))
        return out

    def for_decoding(self, params, frozen):
        return self.adapted.for_decoding(params, frozen)  # frozen is the base itself

    def generate(self, params, frozen, prompts: list[str]) -> list[str]:
        """Greedy answers (text before [EOS]) to prompts, with the method in place (LoRA merged first)."""
        tok = self.tokenizer
        encoded = [instructions.prompt_tokens(tok, p).tolist() for p in prompts]
        model, variables = self.for_decoding(params, frozen)
        out = generate(
            model,
            variables,
            encoded,
            max_new_tokens=self.config.sft.max_new_tokens,
            stop_tokens=(tok.eos_id,),
            pad_id=tok.pad_id,
        )
        return [tok.decode([t for t in row if t != tok.eos_id]) for row in out]
