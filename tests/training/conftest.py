import dataclasses

import pytest

from vaejax.config import PRESETS, TrainConfig

# A small, quick digits configuration shared by the training tests.
SMALL = TrainConfig(model=dataclasses.replace(PRESETS["digits"], hidden=(64,), latent_dim=4),
                    epochs=3, batch_size=100, checkpoint_every=2)


@pytest.fixture
def small_config():
    return SMALL
