"""Peer baseline: Hugging Face transformers' PyTorch GPT-2, float32 on CPU.

The model is built from a local GPT2Config (nothing is downloaded) so its shape can
match ours exactly. torch/transformers are optional (the `peers` extra) and are
imported lazily, so the rest of research.bench works without them.

    python -m research.bench.hf_peer --layers 6 --d_model 384 --heads 6 --vocab 4096 --seq 256 --batch 16
"""

import argparse
import importlib.util
import json
import time

_MISSING = "The Hugging Face peer benchmark needs torch and transformers; install them with `pip install -e .[peers]`."


def peer_available() -> bool:
    """True when torch and transformers can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def _build_model(*, layers, d_model, heads, vocab, n_positions):
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        raise ImportError(_MISSING) from e
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=n_positions,
        n_embd=d_model,
        n_layer=layers,
        n_head=heads,
        n_inner=4 * d_model,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,  # dropout off: compare pure compute
        # GPT-2's default bos/eos ids (50256) lie outside a small vocab; no EOS also
        # means generation never stops early, so every run makes exactly new_tokens.
        bos_token_id=None,
        eos_token_id=None,
    )  # tie_word_embeddings=True is the GPT-2 default, kept
    return torch, GPT2LMHeadModel(config).to(torch.float32)


def hf_train_runner(*, layers: int, d_model: int, heads: int, vocab: int, seq: int, batch: int, warmup: int = 2):
    """`run(steps) -> seconds` of that many full AdamW training steps (forward, loss, backward, update).

    Random tokens; built and warmed up (`warmup` steps allocate optimizer state and warm allocators)
    before it is returned, so a caller can interleave its calls with another implementation's.
    """
    torch, model = _build_model(layers=layers, d_model=d_model, heads=heads, vocab=vocab, n_positions=seq)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step():
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        loss = model(input_ids=ids, labels=ids).loss  # HF shifts labels internally
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()

    def run(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return time.perf_counter() - t0

    return run


def hf_train_tokens_per_sec(
    *, layers: int, d_model: int, heads: int, vocab: int, seq: int, batch: int, steps: int = 10, warmup: int = 2
) -> float:
    """Tokens/s of full AdamW training steps (forward, loss, backward, update) on random tokens."""
    run = hf_train_runner(layers=layers, d_model=d_model, heads=heads, vocab=vocab, seq=seq, batch=batch, warmup=warmup)
    return batch * seq * steps / run(steps)


def hf_generate_tokens_per_sec(
    *, layers: int, d_model: int, heads: int, vocab: int, prompt_len: int, new_tokens: int, batch: int, repeats: int = 3
) -> float:
    """New tokens/s of greedy KV-cached `model.generate` (best of `repeats` after one warmup)."""
    torch, model = _build_model(
        layers=layers, d_model=d_model, heads=heads, vocab=vocab, n_positions=prompt_len + new_tokens
    )
    model.eval()
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
    best = float("inf")
    with torch.inference_mode():
        model.generate(ids, **kwargs)  # warmup
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(ids, **kwargs)
            best = min(best, time.perf_counter() - t0)
    assert out.shape == (batch, prompt_len + new_tokens), out.shape
    return batch * new_tokens / best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16, help="training batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--gen_batches", default="1,8", help="comma-separated generate batch sizes")
    a = p.parse_args(argv)
    if not peer_available():
        raise SystemExit(_MISSING)
    from research.bench.peak import measure_matmul_peak_flops, transformer_train_flops_per_token

    shape = dict(layers=a.layers, d_model=a.d_model, heads=a.heads, vocab=a.vocab)
    train = hf_train_tokens_per_sec(**shape, seq=a.seq, batch=a.batch, steps=a.steps, warmup=a.warmup)
    print(f"train    batch={a.batch} seq={a.seq}: {train:,.0f} tokens/s")
    gen = {}
    for b in (int(x) for x in a.gen_batches.split(",")):
        gen[b] = hf_generate_tokens_per_sec(**shape, prompt_len=a.prompt_len, new_tokens=a.new_tokens, batch=b)
        print(f"generate batch={b} prompt={a.prompt_len} new={a.new_tokens}: {gen[b]:,.0f} tokens/s")
    # Peak is measured with JAX (our framework) so both sides share one yardstick.
    peak = measure_matmul_peak_flops()
    model_flops = train * transformer_train_flops_per_token(a.layers, a.d_model, a.vocab, a.seq)
    print(
        f"train model FLOP/s {model_flops / 1e9:.1f} G of f32 matmul peak {peak / 1e9:.1f} G = {model_flops / peak:.1%}"
    )
    import torch
    import transformers

    print(
        json.dumps(
            {
                "peer": "hf_gpt2_pytorch_cpu_f32",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                **shape,
                "seq": a.seq,
                "batch": a.batch,
                "train_tokens_per_sec": train,
                "prompt_len": a.prompt_len,
                "new_tokens": a.new_tokens,
                "generate_tokens_per_sec": {str(b): v for b, v in gen.items()},
                "matmul_peak_flops": peak,
                "train_model_flops_per_sec": model_flops,
                "train_peak_fraction": model_flops / peak,
            }
        )
    )


if __name__ == "__main__":
    main()
