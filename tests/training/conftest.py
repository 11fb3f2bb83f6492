import contextlib
import dataclasses
import os
import subprocess
import sys

import pytest

from vaejax.config import PRESETS, TrainConfig
from vaejax.trainer import Trainer

# A small, quick digits configuration shared by the training tests.
SMALL = TrainConfig(model=dataclasses.replace(PRESETS["digits"], hidden=(64,), latent_dim=4),
                    epochs=3, batch_size=100, checkpoint_every=2)


@pytest.fixture
def small_config():
    return SMALL


@contextlib.contextmanager
def at_epoch(epoch_index: int, action):
    """Calls `action()` when training inside the block starts computing epoch `epoch_index`."""
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        epoch_fn = self.train_epoch

        def train_epoch(state, data, epoch):
            if epoch == epoch_index:
                action()
            return epoch_fn(state, data, epoch)
        self.train_epoch = train_epoch

    Trainer.__init__ = init
    try:
        yield
    finally:
        Trainer.__init__ = original


@contextlib.contextmanager
def interrupted_at(stop_epoch: int):
    """Training inside the block stops, as a kill would, when it reaches `stop_epoch`."""
    def kill():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), at_epoch(stop_epoch, kill):
        yield


def run_on_host_devices(script: str, devices: int = 8) -> str:
    """Runs a Python script in a fresh process that sees `devices` CPU devices; its stdout."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout
