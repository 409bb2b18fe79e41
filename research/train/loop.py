"""The training loop: one function, cut into sections.

config -> tokenizer, task, mesh -> sharded state (fresh or restored) ->
jit(train_step) -> loop with logging, eval and checkpoints. Each step's batch
comes from the task's batch source, which sees the current state (on-policy RL
samples from it; everything else reads a data iterator).
"""

import functools
import json
import time

import flax.linen as nn
import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from research.data.pipeline import document_texts
from research.models import hf
from research.tokenizers import ByteTokenizer, load_tokenizer, train_tokenizer
from research.train import checkpoint, runs
from research.train.faults import NonfiniteStreak, Preempted, StopRequests
from research.train.metrics import MetricsWriter
from research.train.report import write_report
from research.train.sharding import LOGICAL_RULES, make_mesh, mesh_shape
from research.train.sources import to_global
from research.train.state import count_params, create_train_state, learning_rate_schedule, make_optimizer, state_shapes
from research.train.step import eval_step, train_step
from research.train.tasks import data_spec, get_task, validate_config
from research.train.utilization import Utilization


def workdir_tokenizer(config, workdir):
    """The workdir's saved tokenizer when resuming; else that of the run this one starts from (the
    base it adapts, train.init_from, a teacher: Task.tokenizer_sources) when it has this run's
    data.tokenizer and vocab_size (any vocabulary for "pretrained"), so their ids agree; else one
    trained on the start of the train split. Training is deterministic, so every process of a
    multi-host run builds the same one.
    """
    d = config.data
    path = epath.Path(workdir) / "tokenizer.json"
    if path.exists():
        tokenizer = load_tokenizer(path)
        saved = list(getattr(tokenizer, "added", ()))
        if saved != d.added_tokens.split():
            raise ValueError(
                f"data.added_tokens={d.added_tokens!r}, but the run in {workdir} has added tokens {saved}; "
                "nothing was changed. Use a new --workdir, or the old value"
            )
        return tokenizer
    for source in get_task(config.train.task).tokenizer_sources(config):
        if hf.is_hf_folder(source):
            if d.tokenizer == "pretrained":
                return runs.read_tokenizer(source, "the pretrained source").with_added_tokens(d.added_tokens.split())
            continue
        path, saved = epath.Path(source) / "tokenizer.json", epath.Path(source) / "config.json"
        if path.exists() and saved.exists():
            other = json.loads(saved.read_text()).get("data", {})
            theirs = (other.get("tokenizer"), other.get("vocab_size"), other.get("added_tokens", ""))
            if d.tokenizer == "pretrained":  # its vocabulary is the source's, whatever data.vocab_size says
                theirs, ours = theirs[::2], (d.tokenizer, d.added_tokens)
            else:
                ours = (d.tokenizer, d.vocab_size, d.added_tokens)
            if theirs == ours:
                return load_tokenizer(path)
    if d.tokenizer == "pretrained":
        raise ValueError(
            "data.tokenizer='pretrained' takes the tokenizer.json of the Hugging Face model this run starts from "
            "(train.init_from, the task's base or a distillation teacher), but none names one (or a run trained "
            f"from one) with data.added_tokens={d.added_tokens!r}"
        )
    if d.tokenizer == "byte":  # nothing to learn
        return ByteTokenizer().with_added_tokens(d.added_tokens.split())
    texts = document_texts(data_spec(config), max_bytes=d.tokenizer_sample_bytes)
    tokenizer = train_tokenizer(d.tokenizer, texts, vocab_size=d.vocab_size, min_frequency=d.tokenizer_min_frequency)
    return tokenizer.with_added_tokens(d.added_tokens.split())


def check_batch_fits_mesh(config, num_devices: int) -> None:
    sizes = mesh_shape(config.mesh, num_devices)
    data_parallel = sizes["data"] * sizes["fsdp"] * sizes["expert"]  # the batch is split over all three
    micro = config.train.batch_size // config.train.grad_accum_steps
    if micro % data_parallel:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} / train.grad_accum_steps={config.train.grad_accum_steps} "
            f"= {micro} rows per micro-batch must divide over mesh data*fsdp*expert = {data_parallel} devices"
        )
    if config.model.num_heads % sizes["tensor"]:
        raise ValueError(f"model.num_heads={config.model.num_heads} must be divisible by mesh.tensor={sizes['tensor']}")
    experts = config.model.moe_num_experts
    if experts and experts % sizes["expert"]:  # validate() can't check mesh.expert=-1 before devices are known
        raise ValueError(f"model.moe_num_experts={experts} must be divisible by mesh.expert={sizes['expert']}")


def evaluate(eval_fn, params, frozen, batches, mesh, *, perplexity: bool = True) -> dict:
    """Sums every batch's {"loss_sum", "count", other sums...}; reports each sum per count.

    No batches (tasks evaluated by sampling, e.g. RL): {}.
    """
    if not batches:
        return {}
    totals: dict[str, float] = {}
    for batch in batches:
        out = jax.device_get(eval_fn(params, to_global(batch, mesh), frozen))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = max(totals.pop("count"), 1.0)
    loss = totals.pop("loss_sum") / count
    extra = {f"eval_{k.removesuffix('_sum')}": v / count for k, v in totals.items()}
    out = {"eval_loss": loss, **extra}
    if perplexity:
        out["eval_perplexity"] = float(np.exp(min(loss, 50.0)))
    return out


def window_metrics(window: list[dict]) -> dict:
    """What the log shows for the steps since the last log line (host values, one dict per step).

    Target-weighted means of each logged quantity over the window's steps: one batch's loss is
    noisy (files differ a lot), the window's mean is not. Vectors (e.g. per-expert load) average
    elementwise. Skipped (non-finite) steps are left out of every mean and counted in
    `nonfinite_steps`; a window of only skipped steps logs that count alone.
    """
    skipped = np.array([float(m["nonfinite"]) for m in window])
    kept = [m for m, s in zip(window, skipped, strict=True) if not s]
    out = {"nonfinite_steps": int(skipped.sum())}
    if not kept:
        return out
    tokens = np.array([float(m["target_tokens"]) for m in kept])
    for key in kept[0]:
        if key in ("target_tokens", "learning_rate", "grad_norm", "nonfinite"):
            continue
        values = np.stack([np.asarray(m[key], np.float64) for m in kept])
        out[key] = (np.tensordot(tokens, values, axes=1) / max(tokens.sum(), 1.0)).tolist()
    out["grad_norm"] = float(np.mean([m["grad_norm"] for m in kept]))
    return out


def train(config, workdir) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the last logged metrics."""
    # --- Validate everything before compiling or writing anything. ---
    config = runs.with_pretrained_source(config)  # a Hugging Face start fixes the architecture and tokenizer
    validate_config(config)
    workdir = epath.Path(workdir)
    check_batch_fits_mesh(config, jax.device_count())
    task_cls = get_task(config.train.task)
    checkpoint.check_resume_compatible(workdir, config, extra_keys=task_cls.resume_must_match)
    tokenizer = workdir_tokenizer(config, workdir)
    task = task_cls(config, tokenizer)
    t = config.train

    # --- Mesh, data, state. ---
    mesh = make_mesh(config.mesh)
    train_iter = task.train_iterator(jax.process_index(), jax.process_count())
    eval_batches = task.eval_batches(jax.process_index(), jax.process_count())
    lr_fn = learning_rate_schedule(config.optim, t.steps)
    tx = make_optimizer(config.optim, t.steps)
    workdir.mkdir(parents=True, exist_ok=True)
    manager = checkpoint.make_manager(workdir, keep=t.keep_checkpoints, async_checkpointing=t.async_checkpointing)
    source = task.batch_source(train_iter, mesh)

    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        abstract_state, state_sharding = state_shapes(task.model, tx, mesh, init_fn=task.init_params)
        frozen = task.frozen_params(mesh)
        start, state = checkpoint.restore_newest_good(manager, abstract_state, source.iterator)
        if start is None:
            state, _ = create_train_state(task.model, tx, mesh, jax.random.key(t.seed), init_fn=task.init_params)
            state = state.replace(params=task.initial_params(state.params, frozen))
            start = 0
        checkpoint.save_config(workdir, config)
        if jax.process_index() == 0:
            tokenizer.save(workdir / "tokenizer.json")

        # Inputs keep the shardings they carry (the state's from its logical rules, batch leaves by
        # rank, see research.train.sources); outputs are pinned so the donated state keeps its layout.
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        p_train = jax.jit(
            functools.partial(
                train_step,
                grad_accum_steps=t.grad_accum_steps,
                learning_rate_fn=lr_fn,
                loss_fn=task.loss,
                seed=t.seed,
            ),
            out_shardings=(state_sharding, replicated),
            donate_argnums=0,
        )
        p_eval = jax.jit(functools.partial(eval_step, sums_fn=task.eval_sums), out_shardings=replicated)

        # --- Loop. ---
        writer = MetricsWriter(workdir, config)
        utilization = Utilization(getattr(task.model, "config", None), config.data.seq_len)
        if start == 0:
            writer.write(
                0,
                {
                    "num_params": count_params(state.params),
                    "devices": jax.device_count(),
                    "processes": jax.process_count(),
                    **utilization.header(),
                },
            )
        tokens_per_step = task.tokens_per_step()
        last, window, timed_steps, window_start = {}, [], 0, time.perf_counter()
        streak, unchecked, saved = NonfiniteStreak(t.max_nonfinite_steps), [], start
        bar = tqdm(
            range(start, t.steps),
            initial=start,
            total=t.steps,
            disable=jax.process_index() != 0,
            desc="train",
            dynamic_ncols=True,
        )
        stop = StopRequests()
        try:
            with stop:
                for step in bar:
                    batch = source.next_batch(state, frozen)
                    state, metrics = p_train(state, batch, frozen)
                    window.append(metrics)  # device arrays: no host sync until we log
                    unchecked.append((step + 1, metrics["nonfinite"]))
                    timed_steps += 1
                    if step == start:  # the first call compiles: keep it out of tokens_per_sec
                        jax.block_until_ready(metrics)
                        timed_steps, window_start = 0, time.perf_counter()
                    done = step + 1
                    logging_now = done % t.log_every == 0 or done == t.steps
                    preempted = stop.due(done, at_log_point=logging_now)
                    if logging_now or preempted:
                        window = jax.device_get(window)  # blocks: the timing window ends here
                        elapsed = time.perf_counter() - window_start
                        tokens_per_sec = timed_steps * tokens_per_step / elapsed if timed_steps else None
                        last = {
                            **window_metrics(window),
                            "learning_rate": float(window[-1]["learning_rate"]),
                            "tokens_per_sec": tokens_per_sec,
                            **utilization.metrics(tokens_per_sec),  # mfu, device_memory_gb
                            **source.pop_metrics(),  # e.g. an RL source's rollout reward, KL, lengths, timings
                        }
                        writer.write(done, last)
                        shown = {k: f"{last[k]:.3f}" for k in ("loss", "reward", "kl", "mfu")
                                 if isinstance(last.get(k), float)}  # fmt: skip
                        if "device_memory_gb" in last:
                            shown["mem_gb"] = f"{last['device_memory_gb']:.1f}"
                        bar.set_postfix(**shown, tok_s=f"{last['tokens_per_sec'] or 0:.0f}")
                        window, timed_steps, window_start = [], 0, time.perf_counter()
                    evaluating = done % t.eval_every == 0 or done == t.steps
                    saving = done % t.checkpoint_every == 0 or done == t.steps or preempted
                    if logging_now or evaluating or saving:
                        streak.add(*zip(*jax.device_get(unchecked), strict=True))  # raises after too many in a row
                        unchecked = []
                    if evaluating or saving:
                        # Keep eval and checkpoint time out of tokens_per_sec: finish the queued
                        # train steps first, then push the window's start back by what follows.
                        jax.block_until_ready(state)
                        paused = time.perf_counter()
                        if evaluating and not preempted:
                            eval_metrics = evaluate(
                                p_eval, state.params, frozen, eval_batches, mesh, perplexity=task.reports_perplexity
                            )
                            eval_metrics.update(task.evaluate(state.params, frozen))
                            writer.write(done, eval_metrics)
                            last.update(eval_metrics)
                        if saving and saved != done:
                            checkpoint.save(manager, done, state, source.iterator, force=True)
                            saved = done
                        window_start += time.perf_counter() - paused
                    if preempted:
                        break
        finally:  # also when a NonFiniteError stops the run: a save in flight still completes
            manager.wait_until_finished()
            manager.close()
            writer.close()
            bar.close()
        if stop.signum is not None and saved != t.steps:
            # Eval due at this step was skipped (a preemption grace period is short); the rerun goes on from here.
            raise Preempted(saved, stop.signum)
    if jax.process_index() == 0:
        write_report(workdir)
    return last
