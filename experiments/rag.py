r"""Retrieval-augmented generation on facts the model never saw: closed book, BM25, a dense encoder, the gold chunk.

  python -m research.sweep --config experiments/rag.py --workdir workdirs/rag

Stages:
  sft      a small byte-level decoder (research.reason.recipes' model) fine-tuned on the "rag" kind of
           research/apps/rag_data.py: every example is its own invented world, chunked at n_c in
           CHUNKINGS, the gold chunk among k - 1 BM25-ranked distractors (k in 1..K_MAX) at a random
           position, plus closed-book examples (no passages). It learns the skill "find the entity in
           the passages and copy the attribute", not facts: every example's facts are new.
  encoder  train.task="contrastive" (research/train/tasks_contrastive.py): a mean-pooled EncoderModel
           trained with in-batch InfoNCE on (question, answer chunk) pairs of other fresh worlds.
analyze() builds EVAL_WORLDS worlds of other seeds (entities no stage saw), and for each n_c in
CHUNKINGS and k in 1..K_MAX retrieves with BM25 and with the encoder (research.embeddings' exact
Index), augments the prompt (retrieval.augment) and generates greedily. Reported separately:
  recall@k     a retrieved chunk holds the answer's words whole (rag_data.KnowledgeBase.gold)
  exact match  the generated answer is the gold one
with two references: closed book (the same model, no passages: at chance by construction, since
names and values are random; chance is not zero, the best constant guess gets a colour right 1 in 8)
and oracle (the gold chunk alone: the reader's ceiling at that n_c). "Lost in the middle": the gold
chunk with K_MAX - 1 BM25 distractors placed first, middle or last (n_c = POSITION_NC).
Mean and spread (std) over the eval worlds; one training seed (seed=N in the argument).
Writes results.md, results.json, rag.png. Arguments: scale=tiny|full, seed=N.

Sizes (tiny), as measured on the shared 2-core machine (load 5-9 from other jobs), 2026-12-02:
- reader, first format (World.passage-like sentences, "What is the colour of X?" -> bare value), learned
  positions, 300 steps x 16 rows x 384: exact match 0.01 (answer loss 1.8 nats/byte), 16 min.
- key-echo format ("X colour?" -> "X colour white"), learned positions, 300 x 16: loss 1.16.
- the same with RoPE, 700 x 8 (12.9 min): loss 0.30, but the loss is the echo: the reader copies the key
  and guesses the value. Exact match stays at chance in EVERY condition, oracle included (0.03-0.05 vs
  chance 0.037): the tiny reader has NOT learned to read, so the exact-match columns show nothing about
  retrieval yet. More steps (or a larger reader: the full scale) are needed; not measured here.
- encoder 2 x 64, 200 steps x 32 pairs (2 min): in-batch top-1 0.84 on unseen worlds; its recall@k is
  the part of this experiment that shows something at tiny scale (dense 0.81 vs BM25 0.56 recall@1 at
  n_c=6: BM25 gives the attribute word, present in every entity's facts, little weight).
- analysis (3 worlds x 40 entities x 40 questions, 25 conditions): 1 min 50 s.
"""

import json

import numpy as np

from research.config import parse_arg
from research.experiment import Stage
from research.reason.recipes import sft_config
from research.train.tasks import task_config

CHUNKINGS = ((3, 1), (6, 2), (12, 3))  # (n_c words, overlap)
K_MAX = 3
POSITION_NC = 6
SCALES = {
    # decoder (layers, d_model, heads, steps, batch, seq_len), encoder (layers, d_model, heads, steps, batch),
    # eval (worlds, entities per world, questions per world)
    "tiny": dict(decoder=(2, 128, 4, 700, 8, 384), encoder=(2, 64, 4, 200, 32), eval=(3, 40, 40)),
    "full": dict(decoder=(8, 512, 8, 5000, 64, 384), encoder=(6, 256, 8, 3000, 128), eval=(3, 200, 300)),
}
MAX_ANSWER_TOKENS = 40  # the longest answer, "Ushgarbri founder Jonah Zenzen", is 30 bytes; the key is echoed
EVAL_SEED = 10_000  # eval world w has seed EVAL_SEED + w: no training example's world (those come from rng draws)


def _arg(arg):
    arg = parse_arg(arg, scale="tiny", seed=0)
    if arg.scale not in SCALES:
        raise ValueError(f"rag scale={arg.scale!r}; choose one of {sorted(SCALES)}")
    return arg


def sft_kinds() -> str:
    kinds = [f"rag:passages={k}:words={n}:overlap={o}" for n, o in CHUNKINGS for k in range(1, K_MAX + 1)]
    return ",".join([*kinds, "rag:passages=0"])


def get_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, steps, batch, seq_len = SCALES[arg.scale]["decoder"]
    c = sft_config(sft_kinds(), layers=layers, d_model=d_model, heads=heads, steps=steps, batch=batch,
                   max_new_tokens=MAX_ANSWER_TOKENS, seed=arg.seed, seq_len=seq_len, eval_examples=100)  # fmt: skip
    c.sft.num_train_examples = 1_000_000  # fresh worlds throughout: no example is seen twice
    c.model.position = "rope"  # relative positions: copying what follows a key's earlier occurrence needs no
    # per-position learning (learned positions left exact match at 0.0 after 300 steps of 16 rows)
    return c


def encoder_config(arg=None):
    arg = _arg(arg)
    layers, d_model, heads, steps, batch = SCALES[arg.scale]["encoder"]
    c = task_config("contrastive")
    c.model.update(num_layers=layers, d_model=d_model, num_heads=heads, num_kv_heads=heads,
                   mlp_dim=4 * d_model, position="learned")  # fmt: skip
    c.encoder.pooling = "mean"
    c.data.seq_len = 96  # [CLS] + a 12-word chunk (< 90 bytes) or a question
    c.contrastive.update(words=",".join(str(n) for n, _ in CHUNKINGS), overlap=",".join(str(o) for _, o in CHUNKINGS))
    c.train.update(steps=steps, batch_size=batch, eval_every=steps, checkpoint_every=steps, log_every=50,
                   eval_batches=4, seed=arg.seed)  # fmt: skip
    c.optim.update(learning_rate=1e-3, warmup_steps=20, weight_decay=0.0)
    return c


def get_stages(arg=None):
    return [Stage("sft", get_config(arg)), Stage("encoder", encoder_config(arg))]


# --- Analysis -------------------------------------------------------------------------------------


def chance_exact_match(questions) -> float:
    """The best constant guess's exact match per question's attribute (research.data.entities' draws)."""
    from research.apps import rag_data
    from research.data import entities

    names = len(entities.SYLLABLES) ** 2  # rivers and founders' surnames: two syllables
    best = {"colour": 1 / len(entities.COLOURS), "age": 1 / 90, "population": 1 / 900, "river": 1 / names,
            "founder": 1 / (len(entities.FIRST_NAMES) * names)}  # fmt: skip
    return float(np.mean([best[rag_data.attribute_of(q)] for q in questions]))


class Reader:
    """The SFT run answering RAG prompts greedily, in length-sorted batches (few padding tokens, few compiles)."""

    def __init__(self, workdir, batch_size: int = 128):
        from research.train.runs import load_run

        self.run = load_run(workdir)
        self.model, self.params = self.run.for_decoding()
        self.batch_size = batch_size

    def answer(self, prompts: list[str]) -> list[str]:
        from research.data import instructions
        from research.decode import generate

        tok = self.run.tokenizer
        encoded = [instructions.prompt_tokens(tok, p).tolist() for p in prompts]
        order = np.argsort([len(e) for e in encoded], kind="stable")
        out = [""] * len(prompts)
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            got = generate(self.model, self.params, [encoded[r] for r in rows], max_new_tokens=MAX_ANSWER_TOKENS,
                           stop_tokens=(tok.eos_id,), pad_id=tok.pad_id)  # fmt: skip
            for r, ids in zip(rows, got, strict=True):
                out[r] = tok.decode([t for t in ids if t != tok.eos_id])
        return out


def evaluate_world(world_seed, entities, num_questions, reader, embed) -> dict:
    """{condition: {"recall", "exact_match"}} on one unseen world; conditions named like "bm25/n_c=8/k=3"."""
    from research.apps import rag_data, retrieval
    from research.data.entities import make_world

    world = make_world(entities, seed=world_seed)
    questions = world.questions(np.random.default_rng(world_seed), num_questions)
    prompts, recalls = {"closed_book": [rag_data.rag_prompt(q, []) for q in questions]}, {}
    for n_c, overlap in CHUNKINGS:
        kb = rag_data.KnowledgeBase(world, n_c, overlap)
        gold = [kb.gold(q) for q in questions]
        best = [g[0] if g else rag_data.kb_best(kb, q) for g, q in zip(gold, questions, strict=True)]
        oracle = [rag_data.rag_prompt(q, [kb.texts[b]]) for q, b in zip(questions, best, strict=True)]
        prompts[f"oracle/n_c={n_c}"] = oracle
        recalls[f"oracle/n_c={n_c}"] = 1.0
        lexical = retrieval.BM25(kb.texts)
        for name, retriever in (("bm25", lexical), ("dense", retrieval.DenseRetriever(embed, kb.texts))):
            _, ids = retriever.search([rag_data.query(q) for q in questions], K_MAX)
            for k in range(1, K_MAX + 1):
                key = f"{name}/n_c={n_c}/k={k}"
                recalls[key] = retrieval.recall_at_k(ids[:, :k], gold)
                prompts[key] = [rag_data.rag_prompt(q, [kb.texts[i] for i in row[:k]])
                                for q, row in zip(questions, ids, strict=True)]  # fmt: skip
        if n_c == POSITION_NC:
            _, ranked = lexical.search([rag_data.query(q) for q in questions], K_MAX + 2)
            for position in retrieval.POSITIONS:
                prompts[f"position={position}"] = [
                    rag_data.rag_prompt(
                        q, retrieval.place(kb.texts[b], [kb.texts[i] for i in row if i not in g][: K_MAX - 1], position)
                    )  # fmt: skip
                    for q, b, g, row in zip(questions, best, gold, ranked, strict=True)
                ]
                recalls[f"position={position}"] = 1.0
    keys = list(prompts)
    flat = reader.answer([p for key in keys for p in prompts[key]])
    out = {}
    for j, key in enumerate(keys):
        got = flat[j * len(questions) : (j + 1) * len(questions)]
        em = float(np.mean([rag_data.answer_of(g, q) == q.answer for g, q in zip(got, questions, strict=True)]))
        out[key] = {"exact_match": em, "recall": recalls.get(key)}
    out["chance"] = {"exact_match": chance_exact_match(questions), "recall": None}
    return out


def summarize(per_world: list[dict]) -> dict:
    """{condition: {metric: [mean, std]}} over the worlds."""
    out = {}
    for key in per_world[0]:
        out[key] = {}
        for metric in ("exact_match", "recall"):
            values = [w[key][metric] for w in per_world]
            out[key][metric] = None if values[0] is None else [float(np.mean(values)), float(np.std(values))]
    return out


def _cell(value) -> str:
    return "" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def markdown(summary: dict, n_worlds: int, n_questions: int) -> str:
    s = summary
    lines = [f"Mean ± std over {n_worlds} unseen worlds, {n_questions} questions each.", "",
             "| condition | recall@k | exact match |", "|---|---:|---:|",
             f"| chance (best constant guess) | | {_cell(s['chance']['exact_match'])} |",
             f"| closed book | | {_cell(s['closed_book']['exact_match'])} |"]  # fmt: skip
    n_mid = POSITION_NC
    for name in ("bm25", "dense"):
        key = f"{name}/n_c={n_mid}/k={K_MAX}"
        lines.append(f"| {name}, n_c={n_mid}, k={K_MAX} | {_cell(s[key]['recall'])} | {_cell(s[key]['exact_match'])} |")
    lines.append(f"| oracle (gold chunk), n_c={n_mid} | 1 | {_cell(s[f'oracle/n_c={n_mid}']['exact_match'])} |")
    lines += ["", "Sweep: recall@k / exact match.", "",
              "| retriever | n_c | " + " | ".join(f"k={k}" for k in range(1, K_MAX + 1)) + " | oracle EM |",
              "|---|---:|" + "---:|" * (K_MAX + 1)]  # fmt: skip
    for name in ("bm25", "dense"):
        for n_c, _ in CHUNKINGS:
            cells = []
            for k in range(1, K_MAX + 1):
                r = s[f"{name}/n_c={n_c}/k={k}"]
                cells.append(f"{r['recall'][0]:.2f} / {r['exact_match'][0]:.2f}")
            oracle = s[f"oracle/n_c={n_c}"]["exact_match"][0]
            lines.append(f"| {name} | {n_c} | " + " | ".join(cells) + f" | {oracle:.2f} |")
    lines += ["", f"Where the gold chunk sits among {K_MAX - 1} BM25 distractors (n_c={POSITION_NC}):", "",
              "| position | exact match |", "|---|---:|"]  # fmt: skip
    for position in ("first", "middle", "last"):
        lines.append(f"| {position} | {_cell(s[f'position={position}']['exact_match'])} |")
    return "\n".join(lines) + "\n"


def plot_seeds(workdir, merged, arg=None):
    """rag.png again from the seeds' merged results: means over seeds, error bars ± std over seeds."""
    del arg
    plot(merged["summary"], workdir / "rag.png", over_seeds=True)


def _mean_err(cell, over_seeds: bool) -> tuple[float, float]:
    """(mean, error bar) of a [mean, std over worlds] cell: for one seed the std over the eval worlds; for the
    seeds' merged cell ([summary of the means, summary of the stds]) the std over seeds of the per-seed means."""
    from research.stats import mean_err

    return mean_err(cell[0]) if over_seeds else (float(cell[0]), float(cell[1]))


def plot(summary: dict, path, over_seeds: bool = False) -> None:
    """Exact match and recall@k vs k per retriever and chunking, and the gold chunk's position; one seed's
    summary (bars: std over eval worlds) or the seeds' merged one (over_seeds: bars ± std over seeds)."""
    from matplotlib.figure import Figure

    def me(key, metric):
        return _mean_err(summary[key][metric], over_seeds)

    spread = "± std over seeds" if over_seeds else "± std over eval worlds"
    fig = Figure(figsize=(13, 3.8))
    em_ax, recall_ax, pos_ax = fig.subplots(1, 3)
    ks = np.arange(1, K_MAX + 1)
    colors = {n_c: f"C{i}" for i, (n_c, _) in enumerate(CHUNKINGS)}  # one colour per chunking in every panel
    for j, (n_c, _) in enumerate(CHUNKINGS):
        color = colors[n_c]
        for m, (name, style) in enumerate((("bm25", "o-"), ("dense", "s--"))):
            x = ks + 0.04 * (2 * j + m - len(CHUNKINGS) + 0.5)  # side by side: the error bars do not overlap
            for ax, metric in ((em_ax, "exact_match"), (recall_ax, "recall")):
                mean, err = zip(*(me(f"{name}/n_c={n_c}/k={k}", metric) for k in ks), strict=True)
                ax.errorbar(x, mean, yerr=err, fmt=style, capsize=3, color=color, label=f"{name} n_c={n_c}")
        mean, err = me(f"oracle/n_c={n_c}", "exact_match")
        em_ax.axhline(mean, color=color, lw=0.8, ls=":")
        em_ax.axhspan(mean - err, mean + err, color=color, alpha=0.1, lw=0)
    mean, err = me("closed_book", "exact_match")
    em_ax.axhline(mean, color="k", lw=1, label="closed book")
    em_ax.axhspan(mean - err, mean + err, color="k", alpha=0.1, lw=0)
    em_ax.set(xlabel="top-k (passages in the prompt)", ylabel="exact match (fraction of questions)",
              title="answers (dotted: oracle chunk)", xticks=ks)  # fmt: skip
    recall_ax.set(xlabel="top-k (passages in the prompt)", ylabel="recall@k (fraction of questions)",
                  title=f"retrieval (bars: {spread})", xticks=ks, ylim=(0, 1.02))  # fmt: skip
    em_ax.legend(fontsize=6)
    positions = ("first", "middle", "last")
    means, errs = zip(*(me(f"position={p}", "exact_match") for p in positions), strict=True)
    pos_ax.bar(positions, means, yerr=errs, capsize=3, color=colors.get(POSITION_NC, "C4"))
    pos_ax.set(xlabel=f"gold chunk's place among {K_MAX - 1} BM25 distractors",
               ylabel="exact match (fraction of questions)",
               title=f"gold chunk position (k={K_MAX}, n_c={POSITION_NC})")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def analyze(workdir, runs, arg=None):
    from research.train.tasks_contrastive import load_encoder

    arg = _arg(arg)
    n_worlds, entities, n_questions = SCALES[arg.scale]["eval"]
    by_stage = {r.stage: r for r in runs}
    reader = Reader(by_stage["sft"].workdir)
    embed = load_encoder(by_stage["encoder"].workdir)
    per_world = [evaluate_world(EVAL_SEED + w, entities, n_questions, reader, embed) for w in range(n_worlds)]
    summary = summarize(per_world)
    (workdir / "results.json").write_text(json.dumps({"summary": summary, "per_world": per_world}, indent=1))
    text = markdown(summary, n_worlds, n_questions)
    (workdir / "results.md").write_text(text)
    print(text)
    plot(summary, workdir / "rag.png")
