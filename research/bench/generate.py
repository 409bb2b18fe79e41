r"""Generation throughput: our KV-cache loop vs Hugging Face `generate()`, same shape, same run.

  python -m research.bench.generate --layers 6 --d_model 384 --heads 6 --vocab 4096 --batch 1 --batch 8

Counts new tokens only (prompt_len-token prompts, new_tokens generated, no
early stop). Last line: one JSON object with tokens_per_sec per batch size.
"""

import time

import flax.linen as nn
import jax
from absl import app, flags

from research.bench import common
from research.decode import generate
from research.models import init_params

flags.DEFINE_multi_integer("batch", [1, 8], "Batch sizes; repeat the flag.")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens.")
flags.DEFINE_integer("new_tokens", 256, "Generated tokens.")
flags.DEFINE_integer("repeats", 3, "Timed runs (best is reported).")


def our_tokens_per_sec(model, params, batch: int) -> float:
    f = flags.FLAGS
    prompts = jax.random.randint(jax.random.key(batch), (batch, f.prompt_len), 0, f.vocab).tolist()
    run = lambda: generate(model, params, prompts, max_new_tokens=f.new_tokens)  # noqa: E731  greedy
    run()  # compile
    best = min(_timed(run) for _ in range(f.repeats))
    return batch * f.new_tokens / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()  # generate() returns host lists, so the device work is done
    return time.perf_counter() - start


def main(argv):
    del argv
    from research.bench import hf_peer

    f = flags.FLAGS
    model = common.gpt2_like_model(f.prompt_len + f.new_tokens)
    params = nn.unbox(init_params(model, jax.random.key(0)))
    rows, record = [], {"tokens_per_sec": {}, "peer_tokens_per_sec": {}, "speedup_vs_peer": {}}
    for batch in f.batch:
        ours = our_tokens_per_sec(model, params, batch)
        peer = common.peer_or_none(
            hf_peer.hf_generate_tokens_per_sec,
            layers=f.layers,
            d_model=f.d_model,
            heads=f.heads,
            vocab=f.vocab,
            prompt_len=f.prompt_len,
            new_tokens=f.new_tokens,
            batch=batch,
        )
        rows.append(
            {
                "batch": batch,
                "research tok/s": ours,
                "hf generate tok/s": peer or float("nan"),
                "speedup": ours / peer if peer else float("nan"),
            }
        )
        record["tokens_per_sec"][str(batch)] = ours
        record["peer_tokens_per_sec"][str(batch)] = peer
        record["speedup_vs_peer"][str(batch)] = ours / peer if peer else None
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
    common.print_table(rows)
    common.print_json(record)


if __name__ == "__main__":
    app.run(main)
