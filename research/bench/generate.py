r"""Generation throughput: our KV-cache loop vs Hugging Face `generate()`, same shape, same run.

  python -m research.bench.generate --layers 6 --d_model 384 --heads 6 --vocab 4096 --batch 1 --batch 8
  python -m research.bench.generate --sweep_d_model 128,256,384,512,768        # width scaling
  python -m research.bench.generate --sweep_prompt_len 128,256,512,1024,2048   # context scaling

Counts new tokens only (prompt_len-token prompts, new_tokens generated greedily, no early
stop). Reported per batch size: tokens/s, the peer's, and the fraction of the memory-bound
floor reached: a decode step reads every weight once, so `weights bytes / measured read
bandwidth` (research.bench.peak.measure_read_bandwidth) is the fastest a step at batch 1 can be.

Sweeps vary one size from the shape flags (a width sweep keeps the head dim) and print the
same per point, then the fitted log-log slope of time per new token vs that size (batch =
the first --batch). Last line: one JSON object.
"""

import dataclasses
import time

import flax.linen as nn
import jax
from absl import app, flags

from research.bench import common
from research.bench.peak import measure_read_bandwidth
from research.decode import generate
from research.models import init_params

flags.DEFINE_multi_integer("batch", [1, 8], "Batch sizes; repeat the flag.")
flags.DEFINE_integer("prompt_len", 32, "Prompt tokens.")
flags.DEFINE_integer("new_tokens", 256, "Generated tokens.")
flags.DEFINE_integer("repeats", 3, "Timed runs (best is reported).")
flags.DEFINE_list("sweep_d_model", [], "Widths to sweep (comma-separated); keeps the head dim.")
flags.DEFINE_list("sweep_prompt_len", [], "Prompt lengths to sweep (comma-separated): the context the cache holds.")


@dataclasses.dataclass(frozen=True)
class Shape:
    layers: int
    d_model: int
    heads: int
    vocab: int
    prompt_len: int
    new_tokens: int

    def check(self, flag: str = "--prompt_len") -> None:
        common.check_shape(layers=self.layers, d_model=self.d_model, heads=self.heads, vocab=self.vocab)
        for name, value in ((flag, self.prompt_len), ("--new_tokens", self.new_tokens)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")


def our_tokens_per_sec(model, params, shape: Shape, batch: int, repeats: int) -> float:
    prompts = jax.random.randint(jax.random.key(batch), (batch, shape.prompt_len), 0, shape.vocab).tolist()
    run = lambda: generate(model, params, prompts, max_new_tokens=shape.new_tokens)  # noqa: E731  greedy
    run()  # compile
    best = min(_timed(run) for _ in range(repeats))
    return batch * shape.new_tokens / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()  # generate() returns host lists, so the device work is done
    return time.perf_counter() - start


def measure(shape: Shape, batches, *, repeats: int, bandwidth: float) -> dict:
    """Ours and the peer at each batch size for one shape -> a record."""
    from research.bench import hf_peer

    model = common.gpt2_like_model(
        shape.prompt_len + shape.new_tokens,
        layers=shape.layers,
        d_model=shape.d_model,
        heads=shape.heads,
        vocab=shape.vocab,
    )
    params = nn.unbox(init_params(model, jax.random.key(0)))
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    floor_s = weight_bytes / bandwidth  # one step at batch 1 reads every weight once
    rec = dict(shape=dataclasses.asdict(shape), weight_bytes=weight_bytes, per_batch={})
    for batch in batches:
        ours = our_tokens_per_sec(model, params, shape, batch, repeats)
        peer = common.peer_or_none(
            hf_peer.hf_generate_tokens_per_sec,
            layers=shape.layers,
            d_model=shape.d_model,
            heads=shape.heads,
            vocab=shape.vocab,
            prompt_len=shape.prompt_len,
            new_tokens=shape.new_tokens,
            batch=batch,
            repeats=repeats,
        )
        rec["per_batch"][str(batch)] = dict(
            tokens_per_sec=ours,
            peer_tokens_per_sec=peer,
            speedup_vs_peer=ours / peer if peer else None,
            # steps/s over the memory-bound floor's: how close the loop is to reading weights only
            floor_fraction=floor_s * ours / batch,
        )
    return rec


def sweep_shapes(base: Shape, axis: str, values) -> list[Shape]:
    flag = f"--sweep_{axis}"
    values = [int(v) for v in values]
    if axis == "d_model":
        head_dim = base.d_model // base.heads
        for d in values:
            if d < 1 or d % head_dim:
                raise ValueError(
                    f"{flag} value {d} is not a positive multiple of the head dim {head_dim} (--d_model / --heads)"
                )
        shapes = [dataclasses.replace(base, d_model=d, heads=d // head_dim) for d in values]
    elif axis == "prompt_len":
        shapes = [dataclasses.replace(base, prompt_len=p) for p in values]
    else:
        raise ValueError(f"sweep axis {axis!r}; choose d_model or prompt_len")
    for s in shapes:
        s.check(flag if axis == "prompt_len" else "--prompt_len")
    return shapes


def table_rows(rec: dict, first: dict) -> list[dict]:
    rows = []
    for batch, p in rec["per_batch"].items():
        rows.append(
            {
                **first,
                "batch": int(batch),
                "research tok/s": p["tokens_per_sec"],
                "hf generate tok/s": p["peer_tokens_per_sec"] or float("nan"),
                "speedup": p["speedup_vs_peer"] or float("nan"),
                "% of read floor": 100 * p["floor_fraction"],
            }
        )
    return rows


def main(argv):
    del argv
    f = flags.FLAGS
    if f.repeats < 1:
        raise app.UsageError(f"--repeats={f.repeats} must be >= 1")
    if any(b < 1 for b in f.batch):
        raise app.UsageError(f"--batch={f.batch}: every batch size must be >= 1")
    if f.sweep_d_model and f.sweep_prompt_len:
        raise app.UsageError("--sweep_d_model and --sweep_prompt_len: one sweep at a time")
    base = Shape(f.layers, f.d_model, f.heads, f.vocab, f.prompt_len, f.new_tokens)
    axis, values = ("d_model", f.sweep_d_model) if f.sweep_d_model else ("prompt_len", f.sweep_prompt_len)
    try:
        common.check_shape_flags()
        base.check()
        shapes = sweep_shapes(base, axis, values) if values else [base]
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    bandwidth = measure_read_bandwidth()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; read bandwidth {bandwidth / 1e9:.1f} GB/s")
    records, rows = [], []
    for s in shapes:
        records.append(measure(s, f.batch, repeats=f.repeats, bandwidth=bandwidth))
        rows += table_rows(records[-1], {axis: getattr(s, axis)} if values else {})
    common.print_table(rows)
    if not values:
        common.print_json({"read_bandwidth": bandwidth, **records[0]})
        return
    batch = str(f.batch[0])
    sizes = [getattr(s, axis) for s in shapes]
    per_token = [1 / r["per_batch"][batch]["tokens_per_sec"] for r in records]
    out = dict(
        sweep=axis, sizes=sizes, points=records, read_bandwidth=bandwidth, slope=common.fit_slope(sizes, per_token)
    )
    line = f"fitted log-log slope of time per new token vs {axis} (batch {batch}): ours {out['slope']:.2f}"
    if all(r["per_batch"][batch]["peer_tokens_per_sec"] for r in records):
        out["peer_slope"] = common.fit_slope(sizes, [1 / r["per_batch"][batch]["peer_tokens_per_sec"] for r in records])
        line += f", peer {out['peer_slope']:.2f}"
    print(line)
    common.print_json(out)


if __name__ == "__main__":
    app.run(main)
