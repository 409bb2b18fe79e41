"""What ends a training run early, and how it ends without losing work.

- Non-finite steps: research.train.step skips the update of a step whose loss
  or gradient norm is not finite; `NonfiniteStreak` counts them on the host
  (where the loop syncs anyway) and stops the run after
  `train.max_nonfinite_steps` in a row.
- Preemption: `StopRequests` turns SIGTERM (what spot TPUs and GPUs send before
  taking the machine) and SIGINT (Ctrl-C) into a request the loop sees at the
  next step boundary; the loop then saves a checkpoint at that step and raises
  `Preempted`. On several processes every one must stop at the same step: SIGTERM
  goes through JAX's preemption sync service (the coordinator picks the step),
  SIGINT is agreed on at the loop's log points.
"""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class NonFiniteError(RuntimeError):
    """Too many train steps in a row had a non-finite loss or gradient norm."""


class Preempted(Exception):
    """The run saved a checkpoint at `step` and stopped on signal `signum`; rerunning resumes it."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: saved a checkpoint at step {step} and stopped; "
                         "rerun the same command to continue from it")  # fmt: skip


class NonfiniteStreak:
    """Counts skipped (non-finite) steps in a row; raises NonFiniteError when `limit` are."""

    def __init__(self, limit: int):
        self.limit, self.length, self.first = limit, 0, None

    def add(self, steps, flags) -> None:
        """steps: the 1-based step numbers, in order; flags: each step's `nonfinite` metric (0 or 1)."""
        for step, flag in zip(steps, np.asarray(flags).reshape(-1), strict=True):
            if not flag:
                self.length, self.first = 0, None
                continue
            self.length += 1
            self.first = self.first or step
            if self.length >= self.limit:
                raise NonFiniteError(
                    f"steps {self.first}-{step}: {self.length} train steps in a row had a non-finite loss or "
                    f"gradient norm (train.max_nonfinite_steps={self.limit}); their updates were skipped, so "
                    f"the params are those after step {self.first - 1} and no checkpoint holds non-finite "
                    "values. Lower optim.learning_rate, raise optim.warmup_steps or check the data, then rerun "
                    "to resume from the newest checkpoint"
                )


class StopRequests:
    """Context manager: SIGTERM and SIGINT request a stop instead of killing the process.

    `due(step)` is called after every step: True when the run should save and stop there. Handlers
    are installed only in the main thread (Python's rule) and the previous ones come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._multihost = jax.process_count() > 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if sig == signal.SIGTERM and self._multihost:
                    continue  # JAX's preemption notifier holds SIGTERM and tells every process (see due)
                self._previous[sig] = signal.signal(sig, self._request)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _request(self, signum, frame):
        del frame
        if self.signum is not None:  # a second signal: the usual way out (KeyboardInterrupt, or exit)
            signal.signal(signum, self._previous.pop(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    def due(self, step: int, *, at_log_point: bool) -> bool:
        """Whether to save at `step` (1-based, the steps done) and stop.

        One process: as soon as a signal arrived. Several: SIGTERM when JAX's preemption sync
        service says this step is the agreed one (it must be asked at every step); SIGINT at the
        first log point after any process got one (an all-gather, where the loop syncs anyway).
        """
        if not self._multihost:
            return self.signum is not None
        if multihost_utils.reached_preemption_sync_point(step):
            self.signum = signal.SIGTERM
            return True
        if at_log_point:
            got = multihost_utils.process_allgather(np.int32(self.signum or 0))
            if np.any(got):
                self.signum = int(np.max(got))
                return True
        return False
