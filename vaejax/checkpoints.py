"""Orbax checkpoints of a stacked TrainState, written atomically, restored exactly.

The state is stored as a nested dict named by its pytree paths
(params/encoder/layers/0/kernel/value, opt_state/0/mu/..., hyper/beta), so a
leaf is restored by its name, never by its position: two leaves of one shape
(Adam's mu and nu) cannot trade places. PRNG key arrays are stored as their
raw key data.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def _name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    raise TypeError(f"cannot name the pytree path entry {entry!r}")


def named_leaves(tree) -> dict[tuple[str, ...], object]:
    """{path of names: leaf} of a pytree."""
    return {tuple(_name(k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _nest(flat: dict) -> dict:
    out = {}
    for path, leaf in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    return out


def _flatten(nested, prefix=()) -> dict:
    if isinstance(nested, dict):
        return {p: v for k, sub in nested.items() for p, v in _flatten(sub, (*prefix, str(k))).items()}
    if isinstance(nested, (list, tuple)):
        return _flatten(dict(enumerate(nested)), prefix)
    return {prefix: nested}


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
        self._manager.save(epoch, args=ocp.args.StandardSave(_nest(named_leaves(state))))
        self._manager.wait_until_finished()

    def restore(self, epoch: int, like, part: str | None = None):
        """The state saved at `epoch`, in the structure (and dtypes) of `like`.

        With `part` (e.g. "params"), only that top-level entry of the saved
        state is read, into `like` of that entry's structure.

        Raises:
          ValueError: the checkpoint holds other names or shapes (another model).
        """
        saved = _flatten(self._manager.restore(epoch, args=ocp.args.StandardRestore()))
        if part is not None:
            saved = {p[1:]: v for p, v in saved.items() if p[0] == part}
        wanted = named_leaves(like)
        if set(saved) != set(wanted):
            missing = sorted("/".join(p) for p in set(wanted) - set(saved))
            extra = sorted("/".join(p) for p in set(saved) - set(wanted))
            raise ValueError(f"the checkpoint of epoch {epoch} holds other parameters than this "
                             f"model's (missing: {', '.join(missing[:3]) or 'none'}; "
                             f"unexpected: {', '.join(extra[:3]) or 'none'})")
        leaves = []
        for path, leaf in wanted.items():
            value = saved[path]
            expected = jax.random.key_data(leaf).shape if _is_key(leaf) else np.shape(leaf)
            if np.shape(value) != expected:
                raise ValueError(f"the checkpoint of epoch {epoch} holds parameters of other "
                                 f"shapes than this model's ({'/'.join(path)}: "
                                 f"{np.shape(value)}, not {expected})")
            leaves.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
                          if _is_key(leaf) else np.asarray(value, np.asarray(leaf).dtype))
        return jax.tree.unflatten(jax.tree.structure(like), leaves)

    def close(self) -> None:
        self._manager.close()
