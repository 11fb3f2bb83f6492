"""TensorBoard event files of a run: WORKDIR/tensorboard/model_<i>/, one folder per model so
that TensorBoard overlays the models of a sweep (`tensorboard --logdir runs/`).

tensorboardX writes them (no TensorFlow needed); it is imported only when a run trains.
Only process 0 writes.
"""

import time
from pathlib import Path

import jax

# Fields of a metrics record that name the model or the epoch rather than measure it.
_NOT_SCALARS = ("epoch", "model", "seed", "beta")


class TensorBoard:
    """One tensorboardX writer per model, closed on leaving the `with` block.

    Args:
      workdir: the run folder.
      num_models: models in the run.
      purge_step: the first epoch this session trains: TensorBoard hides the
        events at and after it that an earlier, interrupted session wrote.
    """

    def __init__(self, workdir, num_models: int, purge_step: int | None = None):
        self._writers = []
        if jax.process_index() != 0:
            return
        from tensorboardX import SummaryWriter
        # tensorboardX names its files by the second: a suffix keeps a session that starts
        # within the same second as the last from overwriting that one's file.
        suffix = f".{time.time_ns()}"
        self._writers = [SummaryWriter(str(Path(workdir) / "tensorboard" / f"model_{i}"),
                                       purge_step=purge_step, filename_suffix=suffix)
                         for i in range(num_models)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for writer in self._writers:
            writer.close()

    def scalars(self, records: list[dict]) -> None:
        """Every numeric field of one epoch's metrics records (model order), at step = epoch."""
        for writer, record in zip(self._writers, records):
            for key, value in record.items():
                if key not in _NOT_SCALARS and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, record["epoch"])
            writer.flush()  # an interrupted run keeps the epochs it trained

    def images(self, grids: dict[str, list], step: int) -> None:
        """Image grids by name, one (H, W, C) array in [0, 1] per model."""
        for name, per_model in grids.items():
            for writer, image in zip(self._writers, per_model):
                writer.add_image(name, image, step, dataformats="HWC")
