"""Orbax checkpoints of a stacked TrainState, written atomically, restored exactly, verified.

The state is stored as a nested dict named by its pytree paths
(params/encoder/layers/0/kernel/value, opt_state/0/mu/..., hyper/beta), so a
leaf is restored by its name, never by its position: two leaves of one shape
(Adam's mu and nu) cannot trade places. PRNG key arrays are stored as their
raw key data.

Each save records a SHA-256 digest of every leaf's name, dtype, shape and bytes
in `integrity.json`, written after orbax has renamed the checkpoint into place;
a restore recomputes it, so a damaged or unrecorded checkpoint is never used.
"""

import hashlib
import json
import os
import shutil

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


class DamagedCheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or whose contents differ from what was saved."""


def digest(flat: dict) -> str:
    """SHA-256 of {path: array}: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for path in sorted(flat):
        value = np.ascontiguousarray(flat[path])
        h.update(json.dumps(["/".join(path), str(value.dtype), value.shape]).encode())
        h.update(value.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Saves and restores training states under `directory`, one sub-folder per epoch."""

    def __init__(self, directory: str, max_to_keep: int = 2, writer: bool = False):
        """`writer`: the run's one writer (it holds the run lock), which first removes what
        a save cut short (by a kill or a full disk) left: every folder not named by an epoch.

        Over several processes every one saves and restores (orbax writes each value once,
        from process 0, and keeps them in step); process 0 is the writer and records digests.
        """
        self._primary = jax.process_index() == 0
        if writer and self._primary and os.path.isdir(directory):
            for entry in os.scandir(directory):
                if entry.is_dir() and not entry.name.isdigit():
                    shutil.rmtree(entry.path)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)
        self._integrity = os.path.join(os.path.abspath(directory), "integrity.json")

    def latest_epoch(self) -> int | None:
        """The newest completed checkpoint's epoch, or None."""
        return self._manager.latest_step()

    def epochs(self) -> list[int]:
        """Every completed checkpoint's epoch, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def _digests(self) -> dict:
        try:
            with open(self._integrity) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def save(self, epoch: int, state) -> None:
        """Writes `state` as the checkpoint of `epoch` (orbax renames it into place when done)."""
        nested = _nest(named_leaves(state))
        self._manager.save(epoch, args=ocp.args.StandardSave(nested))
        self._manager.wait_until_finished()
        if not self._primary:
            return
        kept = {str(e) for e in self._manager.all_steps()}
        digests = {k: v for k, v in self._digests().items() if k in kept}
        digests[str(epoch)] = digest(_flatten(nested))
        tmp = self._integrity + ".tmp"
        with open(tmp, "w") as f:
            json.dump(digests, f, indent=1, sort_keys=True)
        os.replace(tmp, self._integrity)

    def _read(self, epoch: int) -> dict:
        """{path: array} of a checkpoint, verified against its recorded digest."""
        expected = self._digests().get(str(epoch))
        if expected is None:
            raise DamagedCheckpointError(f"the checkpoint of epoch {epoch} has no recorded "
                                         "digest (its save did not finish)")
        try:
            saved = _flatten(self._manager.restore(epoch, args=ocp.args.StandardRestore()))
        except Exception as error:  # orbax and tensorstore raise many kinds on damaged files
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise DamagedCheckpointError(f"the checkpoint of epoch {epoch} cannot be read "
                                         f"({reason})") from None
        if digest(saved) != expected:
            raise DamagedCheckpointError(f"the checkpoint of epoch {epoch} differs from what was "
                                         "saved (digest mismatch)")
        return saved

    def restore_latest(self, like, part: str | None = None, *, skip=(),
                       discard_damaged: bool = False, report=print):
        """(epoch, state) of the newest checkpoint that verifies; damaged newer ones are
        reported in one line each (and deleted with discard_damaged, so training can
        write those epochs again; when none verifies, nothing is deleted).

        Raises:
          DamagedCheckpointError: no checkpoint verifies (or there is none).
        """
        damaged = {}
        for epoch in self.epochs():
            try:
                state = self.restore(epoch, like, part, skip=skip)
            except DamagedCheckpointError as error:
                damaged[epoch] = str(error)
                continue
            for bad, problem in damaged.items():
                report(f"{problem}; using the checkpoint of epoch {epoch}")
                if discard_damaged:  # only once a good one is found: nothing else is lost
                    self._manager.delete(bad)
            return epoch, state
        problems = list(damaged.values())
        raise DamagedCheckpointError("; ".join(problems) or "there is no checkpoint")

    def arrays(self, epoch: int, part: str) -> dict[str, np.ndarray]:
        """{name: array} of the top-level entry `part` of a checkpoint, verified."""
        return {"/".join(p[1:]): v for p, v in self._read(epoch).items() if p[0] == part}

    def restore(self, epoch: int, like, part: str | None = None, skip=()):
        """The state saved at `epoch`, in the structure (and dtypes) of `like`.

        With `part` (e.g. "params"), only that top-level entry of the saved
        state is read, into `like` of that entry's structure; top-level entries
        named in `skip` are left out (`like` holds None there).

        Raises:
          ValueError: the checkpoint holds other names or shapes (another model).
          DamagedCheckpointError: it cannot be read, or differs from what was saved.
        """
        saved = {p: v for p, v in self._read(epoch).items() if p[0] not in skip}
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
