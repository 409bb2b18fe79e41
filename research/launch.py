"""Process launch shared by the command-line entry points (research.main, research.sweep).

Multi-host runs start one process per host, each with the same command plus
--coordinator_address, --num_processes and --process_id, or --distributed where
`jax.distributed.initialize()` auto-detects the cluster (TPU pods, SLURM).
"""

import contextlib
import difflib
import sys

import jax
from absl import flags

from research.train.faults import NonFiniteError, Preempted

_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def maybe_initialize_distributed() -> None:
    """Joins the multi-process run the flags describe; a single process does nothing."""
    if _COORDINATOR.value is not None:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def config_overrides(flag_name: str = "config") -> dict:
    """{dotted key: value} of the `--config.*` overrides given on the command line."""
    prefix = flag_name + "."
    values = flags.FLAGS
    return {
        name[len(prefix) :]: values[name].value for name in values if name.startswith(prefix) and values[name].present
    }


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (pass as app.run's flags_parser), with an unknown `--config.KEY` ended as
    one line naming the key and the nearest valid ones; ml_collections raises it as an
    AttributeError from deep inside flag parsing, which would print a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError):
        message = unknown_override(argv)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def unknown_override(argv: list[str], flag_name: str = "config") -> str | None:
    """The first `--config.KEY` in argv that get_config(arg) of the `--config` file lacks, as a message
    with the nearest valid keys; None when every key exists (or argv names no config file)."""
    from research.config import config_keys
    from research.experiment import has_key, load_experiment

    spec, keys = None, []
    for i, a in enumerate(argv[1:], start=1):
        if a == f"--{flag_name}" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif a.startswith(f"--{flag_name}="):
            spec = a.partition("=")[2]
        elif a.startswith(f"--{flag_name}."):
            keys.append(a[len(flag_name) + 3 :].partition("=")[0])
    if spec is None:
        return None
    module, arg = load_experiment(spec)
    config = module.get_config(arg)
    for key in keys:
        if not has_key(config, key):
            nearest = difflib.get_close_matches(key, config_keys(config), n=3, cutoff=0.6)
            hint = f"; nearest: {', '.join(nearest)}" if nearest else ""
            return f"--{flag_name}.{key} is not a config key of {spec}{hint}"
    return None


@contextlib.contextmanager
def clean_exit():
    """Ends the process with one line on stderr and no traceback for what the user fixes or reruns:
    a config or workdir problem (exit 2), a run stopped by non-finite steps (3), and a stop signal
    after its checkpoint was saved (128 + the signal, as a signal would, so schedulers requeue)."""
    try:
        yield
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
