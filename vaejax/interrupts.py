"""SIGINT and SIGTERM during training: stop at a safe point, never inside a write.

While `catch()` is active, the first signal asks training to stop at the next
safe point: before anything is written, or after the epoch in flight (which is
then checkpointed). A second one stops at once, discarding the epoch in flight.
A signal that arrives while a checkpoint or a metrics line is being written
waits until the write is done, so every file is whole. What reaches the caller
is `Interrupted`, a KeyboardInterrupt, so `except Exception` does not swallow it.
"""

import contextlib
import signal
import sys
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal.

    `workdir` is None when it stopped before writing anything; `epoch` is the
    last one checkpointed (0: none yet; None: not known), or with `steps` the one
    checkpointed within, after that many of its steps.
    """

    def __init__(self, signum: int, epoch: int | None = None, workdir=None, steps=None):
        super().__init__(signum, epoch, workdir)
        self.signum, self.epoch, self.workdir, self.steps = signum, epoch, workdir, steps

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM, as shells report."""
        return 128 + self.signum

    def __str__(self):
        name = signal.Signals(self.signum).name
        if self.workdir is None:
            return f"interrupted ({name}) before training began; nothing was written"
        when = {None: "", 0: " before the first epoch"}.get(self.epoch, f" after epoch {self.epoch}")
        if self.steps is not None:
            when = f" after step {self.steps} of epoch {self.epoch}"
        return f"interrupted ({name}){when}; continue with --resume --workdir {self.workdir}"


class _Stops:
    """The process's signal state: the first signal received, the writes in progress, and
    the run folder and epoch an interruption would leave."""

    def __init__(self):
        self.signum = None
        self.writing = 0  # depth of `writing_files()` sections
        self.deferred = False  # a second signal came during a write: stop when it is done
        self.workdir = None  # the run folder, once training writes it
        self.epoch = None  # the run's latest checkpoint
        self.steps = None  # with it a checkpoint within `epoch`, after this many steps
        self.exit_at_once = None  # `(Interrupted) -> NoReturn`: ends the process (the CLI)

    def interrupted(self) -> Interrupted:
        return Interrupted(self.signum, self.epoch, self.workdir, self.steps)

    def handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            print("\nvaejax: stopping at the next safe point (send the signal again to stop at "
                  "once)", file=sys.stderr, flush=True)
        elif self.writing:
            self.deferred = True
        else:
            self._stop_at_once()

    def _stop_at_once(self):
        # Unwinding JAX from inside a compilation can crash the interpreter's shutdown, so a
        # process that owns its interpreter ends here: outside writes every file is whole.
        if self.exit_at_once is not None:
            self.exit_at_once(self.interrupted())
        raise self.interrupted()

    @contextlib.contextmanager
    def writing_files(self):
        """A section no signal interrupts: a second signal meanwhile takes effect at its end."""
        self.writing += 1
        try:
            yield
        finally:
            self.writing -= 1
        if not self.writing and self.deferred:
            self.deferred = False
            self._stop_at_once()

    def check(self) -> None:
        """A safe point: raises Interrupted if a signal came."""
        if self.signum is not None:
            raise self.interrupted()

    @property
    def requested(self) -> bool:
        return self.signum is not None


_active: _Stops | None = None


@contextlib.contextmanager
def catch():
    """Handles SIGINT and SIGTERM as this module describes while active (re-entrant).

    Outside the main thread, where Python cannot install handlers, it changes
    nothing (and `requested` stays False).
    """
    global _active
    if _active is not None:
        yield _active
        return
    stops = _Stops()
    if threading.current_thread() is not threading.main_thread():
        yield stops
        return
    previous = {s: signal.signal(s, stops.handle) for s in _SIGNALS}
    _active = stops
    try:
        yield stops
    finally:
        _active = None
        for s, handler in previous.items():
            signal.signal(s, handler)
