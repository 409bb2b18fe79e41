"""Peer baseline: Hugging Face TRL's GRPOTrainer (PyTorch, float32 on CPU).

The benchmark GRPO step of research/bench/rl.py, done by TRL at the same shape: a random
Llama (SwiGLU MLP of 8/3*d rounded up to 64, RMSNorm, RoPE, tied embeddings) built from a
local LlamaConfig, a byte-level tokenizer built in memory (7 special tokens + 256 bytes,
like research.tokenizers.ByteTokenizer), "Reverse: <word>" instruction prompts and an
exact-match reward. Each step generates `group` completions of each of `prompts` prompts,
every one exactly `new_tokens` long (min = max new tokens, EOS masked until then), scores
them, computes reference log-probs (beta > 0) and takes one AdamW step over all the rows.
Nothing is downloaded: the model and tokenizer are written to a temp dir and loaded from
there (TRL builds its reference model from that path). torch/transformers/trl are optional
(the `peers` extra) and imported lazily. torch uses all cores by default; on a machine shared
with other work that makes steps erratic (OpenMP threads wait on a busy core), and --threads 1
gives a steadier number.

    python -m research.bench.trl_peer --layers 4 --d_model 128 --heads 4 --prompts 4 --group 8 --new_tokens 64
"""

import argparse
import importlib.util
import json
import math
import statistics
import tempfile
import time

_MISSING = "The TRL peer benchmark needs torch, transformers and trl; install them with `pip install -e .[peers]`."

# research.tokenizers' special tokens, in its id order (ids 0..6); bytes follow.
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]")


def trl_available() -> bool:
    """True when torch, transformers and trl can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "trl"))


def _swiglu_mlp_dim(d_model: int) -> int:
    # research.config.swiglu_mlp_dim, restated so this module needs no JAX.
    return (8 * d_model // 3 + 63) // 64 * 64


def _no_remat(config_cls) -> dict:
    """Activation checkpointing off (TRL's default is on; we don't rematerialise), under the name this
    transformers knows: `activation_checkpointing` since 5.x, `gradient_checkpointing` before."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: False}


def _byte_tokenizer():
    """A PreTrainedTokenizerFast over bytes: [BOS] text [SEP] in, like our instruction template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # Byte-level BPE with no merges: one token per byte, so any text encodes and nothing is [UNK].
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate((*_SPECIAL, *alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [SEP]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        padding_side="left",  # prompts are left-padded for generation
    )


def _write_random_llama(path, *, layers, d_model, heads, max_len, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=_swiglu_mlp_dim(d_model),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_len,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)


def _prompt_dataset(n: int):
    from datasets import Dataset

    from research.data.instructions import make_example

    examples = [make_example(i, split="train", seed=0, kinds=("reverse",)) for i in range(n)]
    return Dataset.from_dict({"prompt": [e.prompt for e in examples], "answer": [e.response for e in examples]})


def _exact_match(completions, answer, **_):
    """1.0 where the completion, trailing whitespace aside, is the reversed word."""
    return [float(c.rstrip() == a.rstrip()) for c, a in zip(completions, answer, strict=True)]


def trl_grpo_seconds_per_step(
    *, layers: int, d_model: int, heads: int, prompts: int, group: int, new_tokens: int, steps: int
) -> float:
    """Median seconds per GRPOTrainer step (generate, score, reference log-probs, loss, AdamW
    update) over `steps` steps after one untimed warm-up step."""
    try:
        import torch  # noqa: F401
        from transformers import PrinterCallback, TrainerCallback
        from transformers.utils import logging as hf_logging
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise ImportError(_MISSING) from e

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    rows = prompts * group
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no save/load bars in the benchmark's output
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = _byte_tokenizer()
            shape = dict(layers=layers, d_model=d_model, heads=heads, max_len=128 + new_tokens)
            _write_random_llama(f"{tmp}/model", **shape, tokenizer=tokenizer)
            args = GRPOConfig(
                output_dir=f"{tmp}/out",
                use_cpu=True,
                bf16=False,  # TRL defaults to bf16; the comparison is float32
                **_no_remat(GRPOConfig),
                model_init_kwargs={"dtype": "float32"},
                seed=0,
                max_steps=1 + steps,
                # One step = one generation batch of `prompts` x `group` rows, one optimizer step over all of it.
                per_device_train_batch_size=rows,
                gradient_accumulation_steps=1,
                steps_per_generation=1,
                num_iterations=1,
                num_generations=group,
                max_completion_length=new_tokens,
                generation_kwargs={"min_new_tokens": new_tokens},  # EOS masked: every completion is new_tokens long
                temperature=1.0,
                beta=0.05,  # our kl_coef: a reference model is kept and its log-probs computed each step
                epsilon=0.2,  # our clip_eps
                loss_type="grpo",  # per-sequence mean, then mean over rows: our loss_aggregation="sequence"
                scale_rewards="group",  # our normalize_std
                learning_rate=1e-4,
                lr_scheduler_type="constant",
                warmup_steps=0,
                adam_beta1=0.9,
                adam_beta2=0.95,
                weight_decay=0.1,
                max_grad_norm=1.0,
                disable_dropout=True,
                use_vllm=False,
                report_to="none",
                logging_strategy="no",
                save_strategy="no",
                eval_strategy="no",
                log_completions=False,
                disable_tqdm=True,
                dataloader_num_workers=0,
            )
            timer = StepTimes()
            trainer = GRPOTrainer(
                model=f"{tmp}/model",  # a path: TRL loads its reference model from the same one
                reward_funcs=_exact_match,
                args=args,
                train_dataset=_prompt_dataset(prompts * (1 + steps)),
                processing_class=tokenizer,
                callbacks=[timer],
            )
            trainer.remove_callback(PrinterCallback)  # it prints the end-of-run metrics even with logging off
            trainer.train()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # ends[0] closes the untimed warm-up step; each later step runs from the previous end to its own.
    assert len(timer.ends) == 1 + steps, timer.ends
    seconds = statistics.median(b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False))
    assert math.isfinite(seconds) and seconds > 0, seconds
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (GRPO's G)")
    p.add_argument("--new_tokens", type=int, default=64, help="tokens per completion")
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one untimed)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    a = p.parse_args(argv)
    if not trl_available():
        raise SystemExit(_MISSING)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    shape = dict(layers=a.layers, d_model=a.d_model, heads=a.heads, prompts=a.prompts, group=a.group)
    seconds = trl_grpo_seconds_per_step(**shape, new_tokens=a.new_tokens, steps=a.steps)
    import transformers
    import trl

    print(
        json.dumps(
            {
                "peer": "trl_grpo_pytorch_cpu_f32",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "trl": trl.__version__,
                "threads": torch.get_num_threads(),
                **shape,
                "new_tokens": a.new_tokens,
                "steps": a.steps,
                "grpo_seconds_per_step": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
