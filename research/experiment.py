"""Experiment files: loading them, and running their stages and sweeps.

An experiment file is a Python file with `get_config(arg)` (one run's config,
what `python -m research.main --config FILE[:arg]` trains) and optionally:

- `get_sweep(arg)`: a list of {dotted key: value} overrides of get_config(arg),
  one run per entry, each in WORKDIR/<run name>;
- `get_stages(arg)`: a list of `Stage`s, a chain of runs such as
  pretrain -> SFT -> reward model -> PPO. Each stage is one run in
  WORKDIR/<stage>, or one run per entry of its own sweep in
  WORKDIR/<stage>/<run name>; a stage reads earlier stages' workdirs through
  `inputs` ({dotted key: stage name}, e.g. {"train.init_from": "pretrain"});
- `analyze(workdir, runs, arg)`: writes the results table and plots from the
  finished runs (a list of `Run`), and results.json, which several seeds merge;
- `plot_seeds(workdir, merged, arg)`: the plots again from the seeds' merged
  results (research/stats.py: numbers that vary are {"mean", "std", ...}), with
  error bars.

`python -m research.sweep` runs them (research/sweep.py): every run takes the
command line's `--config.*` overrides, finished runs are skipped, unfinished
ones resume, and multi-host launch works as for research.main.

Seeds are a sweep axis of the runner, not of each file: with `seeds=K > 1` the
whole experiment runs K times, in WORKDIR/seed=<i>, every run's train.seed
raised by i (its init and data order both change; evaluation sets, which have
their own seeds, stay the same). Each seed is analyzed on its own, then the
seeds' results.json are merged (research/stats.py) into WORKDIR/results.json
and results.md, where every number that varies is mean ± std over seeds. A
seed that crashes (any exception but a stop signal or a ValueError, which is a
config or workdir problem and stops everything) is recorded as failed, with its
traceback in WORKDIR/seed=<i>/FAILED; the other seeds' results are kept, and a
rerun retries it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import traceback

import ml_collections
from etils import epath

from research.train.tasks import validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a multi-stage experiment: a config, what it reads from earlier stages, and its sweep."""

    name: str
    config: ml_collections.ConfigDict
    inputs: dict = dataclasses.field(default_factory=dict)  # {dotted key: earlier stage (or "stage/run")}
    sweep: tuple = ()  # ({dotted key: value}, ...): one run each; empty: a single run


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of an experiment, as the runner made it."""

    name: str  # "stage" or "stage/run name" (a sweep of one stage: just the run name)
    stage: str
    overrides: dict
    workdir: epath.Path
    config: ml_collections.ConfigDict


def _resolve(spec_path: str) -> str:
    """Relative experiment paths are taken from the repository root when they don't exist from here."""
    return spec_path if os.path.exists(spec_path) else os.path.join(REPO, spec_path)


def load_experiment(spec: str):
    """'experiments/x.py[:arg]' -> (module, arg or None)."""
    path, _, arg = spec.partition(":")
    resolved = _resolve(path)
    module_spec = importlib.util.spec_from_file_location("experiment", resolved)
    if module_spec is None or not os.path.exists(resolved):
        raise ValueError(f"config file {path!r} not found")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, arg or None


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'experiments/x.py[:arg]' -> validated get_config(arg), as `--config` does on the command line.

    For notebooks and scripts; relative paths are taken from the repository root
    when they don't exist from the current directory.
    """
    module, arg = load_experiment(spec)
    config = module.get_config(arg)
    validate_config(config)
    return config


def run_name(overrides: dict) -> str:
    """{'data.tokenizer': 'bpe', 'data.vocab_size': 512} -> 'tokenizer=bpe,vocab_size=512'."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in overrides.items()) or "base"


def has_key(config, dotted: str) -> bool:
    section, _, name = dotted.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
        if part not in target:
            return False
        target = target[part]
    return name in target


def apply_overrides(config, overrides: dict, *, what: str = "sweep override"):
    """A copy of `config` with {dotted key: value} set; a key the config lacks is an error naming it."""
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        if not has_key(config, key):
            raise ValueError(f"{what} {key!r} is not a config key")
        section, _, name = key.rpartition(".")
        target = config
        for part in filter(None, section.split(".")):
            target = target[part]
        target[name] = value
    return config


def stages_of(experiment, arg) -> list[Stage]:
    """The experiment's stages; a file with only get_sweep is one unnamed stage over get_config(arg)."""
    if hasattr(experiment, "get_stages"):
        stages = list(experiment.get_stages(arg))
        names = [s.name for s in stages]
        if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
            raise ValueError(f"stage names must be distinct, non-empty and without '/': {names}")
        return stages
    if hasattr(experiment, "get_sweep"):
        return [Stage("", experiment.get_config(arg), sweep=tuple(experiment.get_sweep(arg)))]
    raise ValueError("the experiment file defines neither get_stages(arg) nor get_sweep(arg)")


def plan(experiment, arg, workdir, overrides: dict | None = None, *, seed_offset: int = 0) -> list[Run]:
    """Every run of the experiment, in order, with its final config: stage config, sweep entry, the
    workdirs of the stages it reads, then the command line's overrides (applied to every run whose
    config has the key; a key no run has is an error), then train.seed += seed_offset. Validates
    every config before anything runs."""
    workdir = epath.Path(workdir)
    if "://" not in str(workdir):  # stages record each other's workdirs: absolute, so reruns from elsewhere match
        workdir = workdir.absolute()
    overrides = dict(overrides or {})
    runs: list[Run] = []
    by_name: dict[str, list[Run]] = {}
    for stage in stages_of(experiment, arg):
        stage_dir = workdir / stage.name if stage.name else workdir
        for entry in stage.sweep or ({},):
            config = apply_overrides(stage.config, entry)
            for key, source in stage.inputs.items():
                found = by_name.get(source, [])
                if len(found) != 1:
                    known = sorted(by_name)
                    raise ValueError(
                        f"stage {stage.name!r} reads {key} from {source!r}, which names "
                        f"{'no run' if not found else f'{len(found)} runs'}; earlier runs: {known}"
                    )
                config = apply_overrides(config, {key: str(found[0].workdir)}, what=f"stage {stage.name!r} input")
            config = apply_overrides(config, {k: v for k, v in overrides.items() if has_key(config, k)})
            if seed_offset:
                config.train.seed += seed_offset
            name = run_name(entry) if stage.sweep else ""
            run = Run(
                name="/".join(filter(None, (stage.name, name))) or "base",
                stage=stage.name,
                overrides=entry,
                workdir=stage_dir / name if name else stage_dir,
                config=config,
            )
            validate_config(config)
            runs.append(run)
            by_name.setdefault(stage.name, []).append(run)
            by_name[run.name] = [run]
    unused = sorted(k for k in overrides if not any(has_key(r.config, k) for r in runs))
    if unused:
        raise ValueError(f"--config overrides {unused} are keys of no run of this experiment")
    return runs


def seed_workdir(workdir, seed: int) -> epath.Path:
    """Where seed offset `seed` of a several-seed experiment runs."""
    return epath.Path(workdir) / f"seed={seed}"


def run_experiment(
    experiment, arg, workdir, overrides: dict | None = None, *, only: str = "", seeds: int = 1
) -> list[Run]:
    """Trains every unfinished run (resuming where it stopped), skips finished ones, then analyzes.

    only: run just this stage (and no analysis); its inputs must be finished.
    seeds: run the whole experiment this many times, train.seed + 0 .. seeds - 1, each in
      WORKDIR/seed=<i> and analyzed there, then merge the analyses (see the module docstring).
      1: the experiment runs in WORKDIR itself.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r}: the number of seeds must be an integer >= 1")
    if seeds == 1:
        runs = plan(experiment, arg, workdir, overrides)
        _check_only(only, runs)
        _train_and_analyze(experiment, arg, runs, epath.Path(workdir), only)
        return runs

    from absl import logging

    from research.train.faults import Preempted

    plans = {i: plan(experiment, arg, seed_workdir(workdir, i), overrides, seed_offset=i) for i in range(seeds)}
    _check_only(only, plans[0])  # every seed is planned (and validated) before any trains
    failed: dict[int, str] = {}
    for i, runs in plans.items():
        seed_dir = seed_workdir(workdir, i)
        marker = seed_dir / "FAILED"
        if marker.exists():
            marker.unlink()  # a rerun retries a failed seed
        try:
            _train_and_analyze(experiment, arg, runs, seed_dir, only)
        except (Preempted, ValueError):
            raise  # a stop signal (a rerun resumes) or a config/workdir problem (the user fixes): not a crash
        except Exception as e:  # noqa: BLE001 -- one seed's crash must not cost the others
            why = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            logging.exception("experiment seed %d failed; the other seeds go on", i)
            seed_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(why + "\n\n" + traceback.format_exc())
            failed[i] = why
    if len(failed) == seeds:
        raise RuntimeError(f"every seed of the experiment failed: {failed}")
    if not only and hasattr(experiment, "analyze"):
        record = merge_seeds(workdir, list(plans), failed)
        if record and hasattr(experiment, "plot_seeds"):
            experiment.plot_seeds(epath.Path(workdir), record["results"], arg)
    return [run for runs in plans.values() for run in runs]


def merge_seeds(workdir, seeds: list[int], failed: dict[int, str]) -> dict:
    """The seeds' results.json (those that did not fail) merged into WORKDIR/results.json and .md."""
    from research import stats

    workdir = epath.Path(workdir)
    failed, per_seed = dict(failed), {}
    for i in seeds:
        path = seed_workdir(workdir, i) / "results.json"
        if i in failed:
            continue
        if path.exists():
            per_seed[i] = json.loads(path.read_text())
        else:
            failed[i] = f"its analysis wrote no {path}"
    if not per_seed:
        return {}
    merged = stats.merge_results(per_seed)
    record = {"seeds": seeds, "merged_seeds": list(per_seed), "failed": failed, "results": merged}
    (workdir / "results.json").write_text(json.dumps(record, indent=1))
    (workdir / "results.md").write_text(stats.results_markdown(merged, seeds=seeds, failed=failed))
    return record


def _check_only(only: str, runs: list[Run]) -> None:
    if only and only not in {r.stage for r in runs}:
        raise ValueError(f"--only={only!r} is not a stage; stages: {sorted({r.stage for r in runs})}")


def _train_and_analyze(experiment, arg, runs: list[Run], workdir: epath.Path, only: str) -> None:
    """Trains each run of `runs` (of stage `only`, if given) that is not finished, resuming unfinished
    ones; then, unless `only`, the experiment's analysis in `workdir`."""
    from absl import logging

    from research.train import checkpoint
    from research.train.loop import train
    from research.train.tasks import get_task

    for run in runs:
        if only and run.stage != only:
            continue
        if checkpoint.finished(run.workdir, run.config.train.steps):
            # A finished run is reused only if it is the run this config describes.
            extra = get_task(run.config.train.task).resume_must_match
            checkpoint.check_resume_compatible(run.workdir, run.config, extra_keys=extra)
            logging.warning("experiment run %s is finished (%s): skipped", run.name, run.workdir)
            continue
        logging.warning("experiment run %s -> %s", run.name, run.workdir)
        train(run.config, run.workdir)
    if not only and hasattr(experiment, "analyze"):
        workdir.mkdir(parents=True, exist_ok=True)
        experiment.analyze(workdir, runs, arg)
