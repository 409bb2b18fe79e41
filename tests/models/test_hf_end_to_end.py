"""A Hugging Face folder where a workdir goes, and back: load_run / research.sample on it, training
from it (train.init_from), research.export of the trained run, read by transformers.

The folder is built here, as transformers writes one (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json): a tiny GPT-2 with a byte-level BPE whose
special token <|endoftext|> sits at the end of the vocabulary, not at our id 6.
"""

import json
import math

import jax
import numpy as np
import pytest

REASON = "torch and transformers are in the peers extra (pip install -e .[peers]): the Hugging Face round trip"
torch = pytest.importorskip("torch", reason=REASON)
transformers = pytest.importorskip("transformers", reason=REASON)
import tokenizers  # noqa: E402

from research.data.pipeline import document_texts  # noqa: E402
from research.evaluate import evaluate_run  # noqa: E402
from research.export import export  # noqa: E402
from research.models import hf  # noqa: E402
from research.sample import print_samples  # noqa: E402
from research.tokenizers import PretrainedTokenizer, load_tokenizer  # noqa: E402
from research.train import checkpoint, runs  # noqa: E402
from research.train.bits_per_byte import bits_per_byte  # noqa: E402
from research.train.loop import train  # noqa: E402
from research.train.tasks import data_spec, task_config  # noqa: E402

TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]
EOT = "<|endoftext|>"


def _tokenizer():
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=[], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS, trainer=trainer)
    tok.add_special_tokens([EOT])  # after the vocabulary, as in GPT-2
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    tok = _tokenizer()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _their_logits(path, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))).logits.numpy()


def _our_logits(run, tokens):
    model, params = run.for_decoding()
    return np.asarray(model.apply({"params": params}, np.asarray(tokens, np.int32)))


def test_a_hugging_face_folder_loads_like_a_run(folder):
    assert hf.is_hf_folder(folder) and not hf.is_hf_folder(folder / "nothing")
    run = runs.load_run(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert isinstance(run.tokenizer, PretrainedTokenizer)
    eot = theirs.convert_tokens_to_ids(EOT)
    assert run.tokenizer.eos_id == theirs.eos_token_id == eot == run.tokenizer.vocab_size - 1 != 6  # its own id
    assert run.config.data.tokenizer == "pretrained" and run.config.model.position == "learned"
    text = "def f3(x):\n    return x * 3 + 3\n"
    ids = run.tokenizer.encode(text)
    assert ids.tolist() == theirs.encode(text, add_special_tokens=False)
    np.testing.assert_allclose(_our_logits(run, ids[None]), _their_logits(folder, ids[None]), atol=1e-4)


def test_research_sample_reads_the_folder_and_decodes_greedily_like_transformers(folder, capsys):
    prompt = "def f1"
    out = print_samples(str(folder), [prompt], max_new_tokens=6, temperature=0.0, top_k=0, top_p=1.0)
    assert prompt in capsys.readouterr().out
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = transformers.AutoTokenizer.from_pretrained(folder).encode(prompt, return_tensors="pt")
    with torch.no_grad():
        eos = model.config.eos_token_id
        want = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=eos)
    got = list(out[0])
    assert got == want[0, ids.shape[1] :].tolist()[: len(got)] and got


def test_init_from_loads_every_weight_and_the_trained_run_exports_for_transformers(folder, tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    c = task_config("lm")
    # Only the size of the data: the model's architecture and the tokenizer come from the folder.
    c.data.update(seq_len=32, train_files=str(tmp_path / "train.jsonl"), eval_files=str(tmp_path / "train.jsonl"))
    c.train.update(init_from=str(folder), steps=2, batch_size=4, eval_every=2, checkpoint_every=2, log_every=1,
                   eval_batches=1, trackers="")  # fmt: skip
    c.optim.update(learning_rate=1e-4, warmup_steps=1)
    data = math.gcd(4, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    workdir = tmp_path / "run"
    last = train(c, workdir)
    vocab = runs.load_run(folder).tokenizer.vocab_size
    assert np.isfinite(last["eval_loss"])
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["tokenizer"] == "pretrained" and saved["model"]["d_model"] == 32
    assert load_tokenizer(workdir / "tokenizer.json").eos_id == vocab - 1

    # init_from alone: every parameter is the folder's (the run above moved them by two steps)
    run = runs.load_run(workdir)
    fresh = jax.tree.map(jax.numpy.zeros_like, run.params)
    loaded = checkpoint.init_from(str(folder), fresh)
    reference = runs.load_run(folder).params
    jax.tree.map(np.testing.assert_array_equal, loaded, reference)

    out = tmp_path / "exported"
    assert export(workdir, str(out)) == "gpt2"
    tokens = run.tokenizer.encode(TEXTS[5])[None]
    np.testing.assert_allclose(_their_logits(out, tokens), _our_logits(run, tokens), atol=1e-4)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert theirs.eos_token_id == vocab - 1 and theirs.encode(TEXTS[5], add_special_tokens=False) == tokens[0].tolist()
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        export(workdir, str(out))
    assert (out / "model.safetensors").exists()  # untouched


def test_bad_folders_are_errors_naming_the_path(folder, tmp_path):
    def copy(name, **config_changes):
        path = tmp_path / name
        path.mkdir()
        for f in folder.iterdir():
            (path / f.name).write_bytes(f.read_bytes())
        config = json.loads((path / "config.json").read_text())
        config.update(config_changes)
        (path / "config.json").write_text(json.dumps(config))
        return path

    no_weights = copy("no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no_weights.*holds no weights"):
        runs.load_run(no_weights)
    with pytest.raises(ValueError, match="model_type='mamba' has no converter"):
        runs.load_run(copy("mamba", model_type="mamba"))
    small = copy("small_vocab", vocab_size=200)
    with pytest.raises(ValueError, match=r"small_vocab.*\d+ tokens.*200 rows"):
        runs.load_run(small)
    no_tokenizer = copy("no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="no_tokenizer.*without tokenizer.json"):
        runs.load_run(no_tokenizer)
    bert = tmp_path / "bert"
    transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=16).save_pretrained(bert)  # fmt: skip
    with pytest.raises(ValueError, match="'bert' checkpoint; only decoder LMs"):
        runs.load_run(bert)
    c = task_config("lm")
    c.data.tokenizer = "pretrained"
    c.train.steps = 1
    with pytest.raises(ValueError, match="data.tokenizer='pretrained'.*none names one"):
        train(c, tmp_path / "lost")
    assert not (tmp_path / "lost").exists()


def test_lora_sft_on_the_folder_as_base_exports_merged(folder, tmp_path):
    """sft.base_workdir names the folder: the run takes its architecture and tokenizer (no model.* flags),
    trains LoRA on the frozen converted base, and exports with LoRA merged."""
    c = task_config("sft")
    c.data.update(seq_len=64)
    c.train.update(task="sft", steps=2, batch_size=4, eval_every=2, checkpoint_every=2, log_every=1,
                   eval_batches=1, trackers="")  # fmt: skip
    c.sft.update(base_workdir=str(folder), tasks="reverse", eval_examples=2, max_new_tokens=3, num_train_examples=50)
    c.peft.update(method="lora", rank=2)
    c.optim.update(learning_rate=1e-2, warmup_steps=0)
    data = math.gcd(4, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    workdir = tmp_path / "sft"
    out = train(c, workdir)
    assert 0.0 <= out["exact_match"] <= 1.0
    run = runs.load_run(workdir)
    assert run.adapted.spec.method == "lora" and run.tokenizer.eos_id == run.tokenizer.vocab_size - 1
    tokens = run.tokenizer.encode(TEXTS[3])[None]
    adapted = np.asarray(run.adapted.apply({"params": run.params_dict()}, np.asarray(tokens, np.int32)))
    base = _their_logits(folder, tokens)
    assert np.abs(adapted - base).max() > 1e-3  # LoRA moved the model
    export(workdir, str(tmp_path / "merged"))
    np.testing.assert_allclose(_their_logits(tmp_path / "merged", tokens), adapted, atol=1e-4)
    # research.evaluate regenerates the run's last eval: loss and exact match over the frozen converted base
    # and bits per byte on the weights it loaded once, as the run's own loader (LoRA merged) scores them
    again = evaluate_run(workdir, bits_per_byte_bytes=300)
    assert again["exact_match"] == out["exact_match"]
    np.testing.assert_allclose(again["eval_loss"], out["eval_loss"], rtol=1e-6)
    texts = document_texts(data_spec(run.config), "eval", max_bytes=300)
    want = bits_per_byte(*run.for_decoding(), run.tokenizer, texts, seq_len=64)["bits_per_byte"]
    np.testing.assert_allclose(again["bits_per_byte"], want, rtol=1e-5)


def test_research_evaluate_reads_the_folder(folder, tmp_path):
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:50]))
    results = evaluate_run(folder, eval_files=str(tmp_path / "eval.jsonl"), eval_batches=1, bits_per_byte_bytes=500)
    assert results["task"] == "lm" and np.isfinite(results["eval_loss"]) and results["bits_per_byte"] > 0


def test_a_hub_id_reads_the_local_cache_offline(folder, tmp_path, monkeypatch):
    """hf://ORG/NAME resolves through huggingface_hub; offline, from a cache laid out as the Hub's."""
    from huggingface_hub import constants

    cache, sha = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--tiny--gpt2" / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (cache / "models--tiny--gpt2" / "refs").mkdir()
    (cache / "models--tiny--gpt2" / "refs" / "main").write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network in tests, and none needed
    hf.resolve.cache_clear()
    run = runs.load_run("hf://tiny/gpt2")
    tokens = run.tokenizer.encode(TEXTS[1])[None]
    np.testing.assert_allclose(_our_logits(run, tokens), _their_logits(folder, tokens), atol=1e-4)
    with pytest.raises(ValueError, match="hf://tiny/absent.*not in the local Hugging Face cache"):
        runs.load_run("hf://tiny/absent")
    with pytest.raises(ValueError, match="a Hub id is hf://NAME or hf://ORG/NAME"):
        hf.resolve("hf://a/b/c")
    hf.resolve.cache_clear()


@pytest.mark.parametrize("kind", ["bpe", "byte"])
def test_our_own_runs_export_as_llama_with_their_tokenizer(kind, tmp_path):
    """A RoPE/RMSNorm/SwiGLU run of ours is a Llama for transformers; a bpe tokenizer goes out as
    tokenizer.json (same ids), a byte one, with no Hugging Face form, as research_tokenizer.json."""
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    c = task_config("lm")
    c.model.update(num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, ffn="swiglu", norm="rmsnorm",
                   position="rope", scale_tied_logits=False)  # fmt: skip
    c.data.update(seq_len=32, tokenizer=kind, vocab_size=300, train_files=str(tmp_path / "train.jsonl"),
                  eval_files=str(tmp_path / "train.jsonl"))  # fmt: skip
    c.train.update(steps=2, batch_size=4, eval_every=2, checkpoint_every=2, log_every=1, eval_batches=1, trackers="")
    data = math.gcd(4, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    train(c, tmp_path / "run")
    out = tmp_path / "hf"
    assert export(tmp_path / "run", str(out)) == "llama"
    run = runs.load_run(tmp_path / "run")
    tokens = run.tokenizer.encode(TEXTS[7], add_bos=True)[None]
    np.testing.assert_allclose(_their_logits(out, tokens), _our_logits(run, tokens), atol=1e-4)
    if kind == "bpe":
        theirs = transformers.AutoTokenizer.from_pretrained(out)
        assert theirs.encode(TEXTS[7], add_special_tokens=False) == tokens[0, 1:].tolist()
        assert theirs.bos_token_id == run.tokenizer.bos_id and theirs.eos_token_id == run.tokenizer.eos_id
    else:
        assert not (out / "tokenizer.json").exists()
        assert load_tokenizer(out / "research_tokenizer.json").encode(TEXTS[7]).tolist() == tokens[0, 1:].tolist()


def test_a_student_distills_from_the_folder_with_its_tokenizer(folder, tmp_path):
    """distill.teacher_workdir names the folder; the student (its own, smaller architecture) sets
    data.tokenizer=pretrained and gets the teacher's tokenizer."""
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    c = task_config("distill")
    c.model.update(num_layers=1, d_model=16, num_heads=2, num_kv_heads=2, mlp_dim=32)
    c.data.update(seq_len=32, tokenizer="pretrained", train_files=str(tmp_path / "train.jsonl"),
                  eval_files=str(tmp_path / "train.jsonl"))  # fmt: skip
    c.train.update(task="distill", steps=2, batch_size=4, eval_every=2, checkpoint_every=2, log_every=1,
                   eval_batches=1, trackers="")  # fmt: skip
    c.distill.teacher_workdir = str(folder)
    data = math.gcd(4, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    assert np.isfinite(train(c, tmp_path / "student")["eval_loss"])
    student = runs.load_run(tmp_path / "student")
    assert student.model.config.d_model == 16 and student.tokenizer.eos_id == student.tokenizer.vocab_size - 1


def test_dpo_on_the_folder_as_base_and_reference_starts_at_log_2(folder, tmp_path):
    """post.base_workdir names the folder: policy and reference are both its converted weights, so the
    first DPO loss is log 2 and the KL to the reference 0."""
    from research.data import DataSpec, load_sources
    from research.train.metrics import read_metrics

    data_dir = str(tmp_path / "tfds")
    load_sources(DataSpec("toy_sentiment", data_dir, "text", "train", "validation", 32, 8, 1, 0))
    c = task_config("dpo")
    c.data.update(name="toy_sentiment", data_dir=data_dir, seq_len=64)
    c.train.update(task="dpo", steps=1, batch_size=8, eval_every=1, checkpoint_every=1, log_every=1,
                   eval_batches=1, trackers="")  # fmt: skip
    c.post.base_workdir = str(folder)
    c.preference.update(num_train_pairs=32, num_eval_pairs=8, prompt_words=4, continuation_words=6)
    data = math.gcd(8, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    train(c, tmp_path / "dpo")
    first = next(r for r in read_metrics(tmp_path / "dpo") if "loss" in r)
    np.testing.assert_allclose(first["loss"], math.log(2), atol=1e-6)
    assert abs(first["kl_chosen"]) < 1e-6 and first["margin"] == 0.0


def test_a_llama_folder_loads_like_a_run(tmp_path):
    tok = _tokenizer()
    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, initializer_range=0.2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    run = runs.load_run(tmp_path)
    assert run.config.model.position == "rope" and run.config.model.num_kv_heads == 2
    tokens = run.tokenizer.encode(TEXTS[9])[None]
    np.testing.assert_allclose(_our_logits(run, tokens), _their_logits(tmp_path, tokens), atol=1e-4)
