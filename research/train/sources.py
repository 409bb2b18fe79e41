"""Batch sources: what the training loop asks for each step's batch.

A source's `next_batch(state, frozen)` returns the step's global batch, a dict
of jax.Arrays laid out on the mesh. It is given the current train state, so a
batch may depend on the parameters being trained: an RL task samples rollouts
from the current policy (research/post/rollout.py); every other task reads a
data iterator and ignores the state (`IteratorSource`).

`iterator` is what checkpoints save and restore beside the train state: a grain
iterator whose `get_state()` captures everything the source needs to continue
exactly where it stopped. `pop_metrics()` hands the loop what the source
measured since it last asked (an RL source's rewards, KL, lengths, timings).

Every leaf is sharded by its rank: rows over the batch axes of the mesh
(data x fsdp x expert), every other dimension replicated, so [b] rewards and
[b, len] tokens line up row for row.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from research.train.sharding import BATCH_AXES


def batch_leaf_sharding(mesh, ndim: int) -> NamedSharding:
    """A batch leaf of `ndim` axes: rows split over every data-parallel axis, the rest replicated."""
    if ndim < 1:
        raise ValueError("a batch leaf needs a leading row axis; got a scalar")
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated_rows(value: np.ndarray, mesh):
    """A host array that every process holds whole -> a jax.Array with its rows over the batch axes."""
    value = np.asarray(value)
    sharding = batch_leaf_sharding(mesh, value.ndim)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_global(batch: dict, mesh) -> dict:
    """This process's rows (numpy) of each leaf -> one global jax.Array, sharded by rank over the mesh."""
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(batch_leaf_sharding(mesh, np.ndim(v)), np.asarray(v)),
        batch,
    )


class IteratorSource:
    """Reads a checkpointable iterator of process-local numpy batches; the train state is not needed."""

    def __init__(self, iterator, mesh):
        self.iterator = iterator
        self.mesh = mesh

    def next_batch(self, state, frozen) -> dict:
        del state, frozen
        return to_global(next(self.iterator), self.mesh)

    def pop_metrics(self) -> dict:
        """Host-side metrics gathered since the last call, logged with the step window; none here."""
        return {}
