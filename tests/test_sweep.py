import math
import pathlib
import types

import pytest

from research.config import default_config
from research.experiment import Stage, apply_overrides, load_config, load_experiment, plan, run_experiment, run_name
from research.train.tasks import task_config, validate_config
from tests.train import conftest as train_conftest

REPO = pathlib.Path(__file__).resolve().parents[1]
data_dir = train_conftest.data_dir  # the prepared stdlib corpus (a session fixture)
STAGED = sorted(
    str(p.relative_to(REPO)) for p in (REPO / "experiments").glob("*.py") if "def get_stages(" in p.read_text()
)


def test_run_names_and_overrides():
    overrides = {"data.tokenizer": "bpe", "data.vocab_size": 512}
    assert run_name(overrides) == "tokenizer=bpe,vocab_size=512"
    assert run_name({}) == "base"
    config = apply_overrides(default_config(), overrides)
    assert (config.data.tokenizer, config.data.vocab_size) == ("bpe", 512)
    with pytest.raises(ValueError, match="'data.vocab'"):
        apply_overrides(default_config(), {"data.vocab": 3})


def test_tokenizer_experiment_sweep_is_valid():
    experiment, arg = load_experiment("experiments/tokenizers.py:steps=5")
    base = load_config("experiments/tokenizers.py:steps=5")
    sweep = experiment.get_sweep(arg)
    kinds = {s["data.tokenizer"] for s in sweep}
    assert kinds == {"byte", "char", "word", "bpe", "wordpiece", "unigram"}
    for overrides in sweep:
        validate_config(apply_overrides(base, overrides))


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


def test_the_migrated_experiments_are_staged():
    for name in ("bert_classify", "t5_seq2seq", "quantization", "distillation", "lora_rank"):
        assert f"experiments/{name}.py" in STAGED


@pytest.mark.parametrize("path", STAGED)
def test_staged_experiment_plans_and_wires_its_inputs(path, tmp_path):
    """Every run's config is valid, lives in WORKDIR/<stage>[/<run>], and reads its inputs from its siblings."""
    experiment, arg = load_experiment(path)
    stages = experiment.get_stages(arg)
    runs = plan(experiment, arg, tmp_path)
    assert [r.stage for r in runs] == [s.name for s in stages for _ in (s.sweep or [None])]
    for stage in stages:
        mine = [r for r in runs if r.stage == stage.name]
        for run in mine:
            want = tmp_path / stage.name / run_name(run.overrides) if stage.sweep else tmp_path / stage.name
            assert run.workdir == want
            for key, source in stage.inputs.items():
                assert _get(run.config, key) == str(tmp_path / source), (run.name, key)
    # A --config override (a key of get_config) reaches every run that has the key.
    runs = plan(experiment, arg, tmp_path, {"train.steps": 2})
    assert {r.config.train.steps for r in runs} == {2}


def test_lora_rank_small_scale_fine_tunes_a_base_with_the_skills(tmp_path):
    """scale=small: base -> skills (the variants' kinds as Python) -> every variant reads skills, not base."""
    experiment, arg = load_experiment("experiments/lora_rank.py:scale=small")
    runs = {r.name: r.config for r in plan(experiment, arg, tmp_path)}
    skills = runs["skills"]
    assert skills.train.init_from == skills.sft.base_workdir == str(tmp_path / "base")
    assert skills.sft.tasks == "py_uppercase,py_reverse,py_sort"
    variants = {name: c for name, c in runs.items() if name not in ("base", "skills")}
    assert len(variants) == 1 + 2 * 6 + 2  # full, LoRA on q/k/v/out and on every projection at 6 ranks, prefix, adapter
    for name, c in variants.items():
        assert c.sft.base_workdir == str(tmp_path / "skills"), name
        assert c.sft.tasks == "uppercase,reverse,sort", name
        assert c.train.init_from == (str(tmp_path / "skills") if name == "full" else ""), name
    assert runs["lora_all/rank=8,alpha=16.0"].peft.target.endswith(r"|mlp/\w+/kernel$")
    assert runs["lora/rank=8,alpha=16.0"].peft.target == default_config().peft.target
    with pytest.raises(ValueError, match="lora_rank scale='medium'"):
        load_experiment("experiments/lora_rank.py:scale=medium")[0].get_stages("scale=medium")


def _tiny(corpus, task="lm"):
    """A config small enough to train 2 steps in seconds, on whatever fake devices the session has."""
    import jax

    c = task_config(task)
    c.model.update(num_layers=2, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.data.update(seq_len=32, data_dir=corpus)
    c.train.update(steps=2, batch_size=4, eval_every=2, checkpoint_every=2, log_every=1, eval_batches=1)
    data = math.gcd(4, jax.device_count())
    c.mesh.update(data=data, tensor=jax.device_count() // data)
    return c


def _experiment(stages, analyzed=None):
    def analyze(workdir, runs, arg):
        if analyzed is not None:
            analyzed.append((workdir, [r.name for r in runs], arg))

    return types.SimpleNamespace(get_stages=lambda arg: stages, analyze=analyze)


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_runner_trains_in_order_resumes_and_skips(tmp_path, data_dir, monkeypatch):
    from research.train import checkpoint, loop

    trained = []
    real_train = loop.train
    monkeypatch.setattr(loop, "train", lambda config, workdir: (trained.append(workdir), real_train(config, workdir)))
    config = _tiny(data_dir)
    analyzed = []
    experiment = _experiment(
        [Stage("a", config), Stage("b", config, inputs={"train.init_from": "a"})],
        analyzed,
    )
    overrides = {"train.log_every": 2}  # as `--config.train.log_every=2`: every run has the key
    work = tmp_path / "exp"

    # only=: just that stage, no analysis.
    run_experiment(experiment, "x", work, overrides, only="a")
    assert trained == [work / "a"] and not (work / "b").exists() and not analyzed
    assert checkpoint.finished(work / "a", 2)
    a_files = _mtimes(work / "a")

    # The whole experiment: a is finished (skipped, untouched), b trains from it, then the analysis.
    runs = run_experiment(experiment, "x", work, overrides)
    assert trained == [work / "a", work / "b"]
    assert _mtimes(work / "a") == a_files
    assert checkpoint.finished(work / "b", 2)
    assert [r.workdir for r in runs] == [work / "a", work / "b"]
    assert runs[1].config.train.init_from == str(work / "a")
    assert {r.config.train.log_every for r in runs} == {2}
    assert analyzed == [(work, ["a", "b"], "x")]

    # A rerun trains nothing and changes no file; the analysis runs again.
    before = _mtimes(work)
    run_experiment(experiment, "x", work, overrides)
    assert trained == [work / "a", work / "b"]
    assert _mtimes(work) == before
    assert len(analyzed) == 2

    with pytest.raises(ValueError, match="--only='c' is not a stage"):
        run_experiment(experiment, "x", work, overrides, only="c")


def test_plan_overrides_and_errors(tmp_path):
    lm, sft = _tiny(""), _tiny("", "sft")  # nothing trains: no corpus needed
    stages = [Stage("lm", lm), Stage("sft", sft, sweep=({"peft.method": "lora"}, {"peft.method": "adapter"}))]
    runs = plan(_experiment(stages), None, tmp_path, {"train.seed": 3, "sft.eval_examples": 7})
    assert [r.name for r in runs] == ["lm", "sft/method=lora", "sft/method=adapter"]
    assert [r.workdir for r in runs] == [tmp_path / "lm", tmp_path / "sft/method=lora", tmp_path / "sft/method=adapter"]
    assert all(r.config.train.seed == 3 for r in runs)  # every run has the key
    assert "sft" not in runs[0].config and [r.config.sft.eval_examples for r in runs[1:]] == [7, 7]
    assert lm.train.seed == 0 and sft.sft.eval_examples != 7  # the stages' own configs are untouched

    with pytest.raises(ValueError, match=r"\['model.nope'\]"):  # a key no run has
        plan(_experiment(stages), None, tmp_path, {"train.seed": 3, "model.nope": 1})
    with pytest.raises(ValueError, match="'missing'"):  # inputs naming an unknown stage
        plan(_experiment([Stage("lm", lm), Stage("b", lm, inputs={"train.init_from": "missing"})]), None, tmp_path)
    with pytest.raises(ValueError, match="'later'"):  # ... or one that runs after it
        plan(_experiment([Stage("b", lm, inputs={"train.init_from": "later"}), Stage("later", lm)]), None, tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        plan(_experiment([Stage("lm", lm), Stage("lm", lm)]), None, tmp_path)
    with pytest.raises(ValueError, match="reads train.init_from from 'sft'.*2 runs"):  # a sweep is no single input
        plan(_experiment([*stages, Stage("c", lm, inputs={"train.init_from": "sft"})]), None, tmp_path)
    runs = plan(_experiment([*stages, Stage("c", lm, inputs={"train.init_from": "sft/method=lora"})]), None, tmp_path)
    assert runs[-1].config.train.init_from == str(tmp_path / "sft/method=lora")


def _seeded_experiment(train_log, crash=lambda config, workdir: False):
    """Two stages (b reads a) with a fake trainer, and an analysis whose numbers depend on the seed."""
    import json

    from research.train import loop

    config = _tiny("")

    def fake_train(config, workdir):
        train_log.append((workdir, config.train.seed, config.train.get("init_from", "")))
        workdir.mkdir(parents=True, exist_ok=True)  # as train does; no checkpoint, so a rerun trains again
        if crash(config, workdir):
            raise RuntimeError(f"boom at seed {config.train.seed}")

    def analyze(workdir, runs, arg):
        seed = runs[0].config.train.seed
        rows = [dict(name=r.name, accuracy=0.5 + 0.1 * seed, params=100, sample="same text") for r in runs]
        (workdir / "results.json").write_text(json.dumps(dict(rows=rows, base_loss=2.0)))

    experiment = types.SimpleNamespace(
        get_stages=lambda arg: [Stage("a", config), Stage("b", config, inputs={"train.init_from": "a"})],
        analyze=analyze,
        plot_seeds=lambda workdir, merged, arg: train_log.append(("plot_seeds", workdir, merged)),
    )
    return experiment, fake_train, loop


def test_seeds_run_the_experiment_per_seed_and_merge(tmp_path, monkeypatch):
    import json

    log = []
    experiment, fake_train, loop = _seeded_experiment(log)
    monkeypatch.setattr(loop, "train", fake_train)
    runs = run_experiment(experiment, None, tmp_path, {"train.seed": 10}, seeds=3)
    plotted = log.pop()
    assert plotted[:2] == ("plot_seeds", tmp_path)  # the experiment's own plots from the merged results

    # Each seed is the whole experiment in WORKDIR/seed=<i>, train.seed raised by i, inputs within the seed.
    assert [(r.workdir, r.config.train.seed) for r in runs] == [
        (tmp_path / f"seed={i}" / stage, 10 + i) for i in range(3) for stage in ("a", "b")
    ]
    assert log == [
        (tmp_path / f"seed={i}" / stage, 10 + i, "" if stage == "a" else str(tmp_path / f"seed={i}" / "a"))
        for i in range(3)
        for stage in ("a", "b")
    ]
    assert all((tmp_path / f"seed={i}" / "results.json").exists() for i in range(3))
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["seeds"] == [0, 1, 2] and merged["failed"] == {}
    row = merged["results"]["rows"][0]
    assert row["name"] == "a" and row["params"] == 100 and row["sample"] == "same text"  # equal in every seed
    assert row["accuracy"]["n"] == 3 and row["accuracy"]["values"] == pytest.approx([1.5, 1.6, 1.7])
    assert row["accuracy"]["mean"] == pytest.approx(1.6) and row["accuracy"]["std"] == pytest.approx(0.1)
    assert plotted[2] == merged["results"]
    text = (tmp_path / "results.md").read_text()
    assert "3 of 3 seeds" in text and "| a | 1.6 ± 0.1 | 100 | same text |" in text


def test_tokenizers_plot_takes_merged_rows(tmp_path):
    from research.stats import merge_results

    experiment, _ = load_experiment("experiments/tokenizers.py")
    rows = [
        dict(tokenizer="bpe", vocab_size=v, tokens_per_byte=t, bits_per_byte=3.0 - t)
        for v, t in ((512, 0.5), (1024, 0.4))
    ]
    per_seed = {i: [dict(r, bits_per_byte=r["bits_per_byte"] + 0.01 * i) for r in rows] for i in range(3)}
    experiment.plot_seeds(tmp_path, merge_results(per_seed))
    assert (tmp_path / "tokenizers.png").stat().st_size > 1000


def test_a_crashing_seed_is_reported_and_the_others_kept(tmp_path, monkeypatch):
    import json

    log = []
    crash = {"on": True}
    experiment, fake_train, loop = _seeded_experiment(
        log, crash=lambda config, workdir: crash["on"] and config.train.seed == 1 and workdir.name == "b"
    )
    monkeypatch.setattr(loop, "train", fake_train)
    run_experiment(experiment, None, tmp_path, seeds=3)
    log.pop()  # plot_seeds
    failed = tmp_path / "seed=1" / "FAILED"
    assert "RuntimeError: boom at seed 1" in failed.read_text() and "Traceback" in failed.read_text()
    assert not (tmp_path / "seed=1" / "results.json").exists()  # its analysis did not run
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["failed"] == {"1": "RuntimeError: boom at seed 1"} and merged["merged_seeds"] == [0, 2]
    assert merged["results"]["rows"][1]["accuracy"]["values"] == pytest.approx([0.5, 0.7])
    assert "2 of 3 seeds (0, 2)" in (tmp_path / "results.md").read_text()
    assert "seed 1 FAILED: RuntimeError: boom at seed 1" in (tmp_path / "results.md").read_text()

    # A rerun retries the failed seed (the fake trainer leaves no checkpoint: every run trains again).
    crash["on"] = False
    run_experiment(experiment, None, tmp_path, seeds=3)
    assert not failed.exists()
    assert json.loads((tmp_path / "results.json").read_text())["merged_seeds"] == [0, 1, 2]

    # Every seed failing is an error naming them; a ValueError (a config or workdir problem) is not a crash.
    monkeypatch.setattr(loop, "train", lambda config, workdir: (_ for _ in ()).throw(RuntimeError("down")))
    with pytest.raises(RuntimeError, match=r"every seed.*0: 'RuntimeError: down'"):
        run_experiment(experiment, None, tmp_path / "all", seeds=2)
    monkeypatch.setattr(loop, "train", lambda config, workdir: (_ for _ in ()).throw(ValueError("bad key")))
    with pytest.raises(ValueError, match="bad key"):
        run_experiment(experiment, None, tmp_path / "value", seeds=2)
    assert not (tmp_path / "value" / "seed=0" / "FAILED").exists()


@pytest.mark.parametrize("seeds", [0, -1, 1.5, True, "3"])
def test_seeds_must_be_a_positive_integer(seeds, tmp_path):
    experiment, _, _ = _seeded_experiment([])
    with pytest.raises(ValueError, match="seeds="):
        run_experiment(experiment, None, tmp_path, seeds=seeds)
    assert not any(tmp_path.iterdir())  # nothing was written


def test_only_with_seeds_runs_that_stage_in_every_seed(tmp_path, monkeypatch):
    log = []
    experiment, fake_train, loop = _seeded_experiment(log)
    monkeypatch.setattr(loop, "train", fake_train)
    run_experiment(experiment, None, tmp_path, only="a", seeds=2)
    assert [w for w, _, _ in log] == [tmp_path / "seed=0" / "a", tmp_path / "seed=1" / "a"]
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "seed=0" / "results.json").exists()
    with pytest.raises(ValueError, match="--only='c'"):
        run_experiment(experiment, None, tmp_path, only="c", seeds=2)
