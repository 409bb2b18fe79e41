"""Process launch shared by the command-line entry points (research.main, research.sweep).

Multi-host runs start one process per host, each with the same command plus
--coordinator_address, --num_processes and --process_id, or --distributed where
`jax.distributed.initialize()` auto-detects the cluster (TPU pods, SLURM).
"""

import contextlib
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
