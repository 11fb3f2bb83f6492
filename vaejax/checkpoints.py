"""Orbax checkpoints of a stacked TrainState, written atomically, restored exactly.

The state is stored as its flat list of leaves; restoring unflattens them into
the structure of a freshly initialised state, so no pytree type needs a
registration with orbax.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves and restores training states under `directory`, one sub-folder per epoch."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def latest_epoch(self) -> int | None:
        """The newest completed checkpoint's epoch, or None."""
        return self._manager.latest_step()

    def save(self, epoch: int, state) -> None:
        """Writes `state` as the checkpoint of `epoch` (orbax renames it into place when done)."""
        leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(state)]
        self._manager.save(epoch, args=ocp.args.StandardSave({"leaves": leaves}))
        self._manager.wait_until_finished()

    def restore(self, epoch: int, like):
        """The state saved at `epoch`, in the structure (and dtypes) of `like`.

        Raises:
          ValueError: the checkpoint holds arrays of other shapes (another model).
        """
        leaves, treedef = jax.tree.flatten(like)
        saved = self._manager.restore(epoch, args=ocp.args.StandardRestore())["leaves"]
        shapes = [np.shape(x) for x in leaves]
        if [np.shape(x) for x in saved] != shapes:
            raise ValueError(f"the checkpoint of epoch {epoch} holds parameters of other "
                             "shapes than this model's")
        return jax.tree.unflatten(treedef, [np.asarray(s, np.asarray(x).dtype)
                                            for s, x in zip(saved, leaves)])

    def close(self) -> None:
        self._manager.close()
