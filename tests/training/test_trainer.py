"""The compiled training paths agree with each other, and training learns."""

import dataclasses

import jax
import numpy as np
import pytest

from vaejax.config import TrainConfig, validate
from vaejax.train import prepare_data
from vaejax.trainer import Trainer


def _fit(config: TrainConfig, epochs: int, stepwise: bool = False):
    data = prepare_data(validate(config))
    trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
    state = trainer.init()
    device_data = trainer.place(data.train)
    for epoch in range(epochs):
        if stepwise:
            state, _ = trainer.train_epoch_stepwise(state, data.train, epoch)
        else:
            state, _ = trainer.train_epoch(state, device_data, epoch)
    return trainer, state, data


def _assert_params_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


def test_scan_epoch_equals_stepwise_loop(small_config):
    """One whole-epoch scan and a Python loop of jitted steps give the same parameters."""
    _, scanned, _ = _fit(small_config, 2)
    _, stepped, _ = _fit(small_config, 2, stepwise=True)
    _assert_params_close(scanned.params, stepped.params, rtol=1e-5, atol=1e-6)
    assert int(scanned.step[0]) == 2 * (1497 // small_config.batch_size)


def test_vmapped_models_equal_separate_runs(small_config):
    """K = 4 models (2 seeds × 2 β) in one program equal four separate runs."""
    config = dataclasses.replace(small_config, seeds=(0, 7), betas=(0.5, 2.0))
    trainer, together, _ = _fit(config, 2)
    assert trainer.replicas() == [(0, 0.5), (0, 2.0), (7, 0.5), (7, 2.0)]
    for i, (seed, beta) in enumerate(trainer.replicas()):
        _, alone, _ = _fit(dataclasses.replace(small_config, seeds=(seed,), betas=(beta,)), 2)
        mine = jax.tree.map(lambda p: p[i:i + 1], together.params)
        _assert_params_close(mine, alone.params, rtol=1e-5, atol=1e-6)


def test_training_beats_first_epoch_and_pixel_baseline(small_config):
    """The test ELBO after training is far above epoch 1 and above independent Bernoulli pixels."""
    config = dataclasses.replace(small_config, model=TrainConfig().model, batch_size=50)
    data = prepare_data(validate(config))
    trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
    state, device_train, device_test = trainer.init(), trainer.place(data.train), trainer.place(data.test)
    elbos = []
    for epoch in range(80):
        state, _ = trainer.train_epoch(state, device_train, epoch)
        elbos.append(float(trainer.evaluate(state, device_test, epoch)["test_elbo"][0]))
    # The best model with independent pixels: p = training-set mean per pixel.
    p = np.clip(data.train.mean(axis=0), 1e-3, 1 - 1e-3)
    baseline = np.mean(np.sum(data.test * np.log(p) + (1 - data.test) * np.log1p(-p), axis=(1, 2, 3)))
    assert elbos[-1] > elbos[0] + 5.0
    # The ELBO only bounds the VAE's log-likelihood from below, so clearing the
    # baseline's exact log-likelihood by 2 nats means a truly better model.
    assert elbos[-1] > baseline + 2.0, (elbos[-1], baseline)


@pytest.mark.parametrize("overrides", [
    {"objective": "iwae", "num_samples": 5},
    {"kl_warmup_epochs": 2},
    {"free_bits": 0.5},
    {"model_posterior": "full"},
    {"model_likelihood": "continuous_bernoulli", "binarization": "dequantize"},
    {"model_likelihood": "gaussian", "model_gaussian_scale": None, "binarization": "dequantize"},
    {"model_likelihood": "logistic", "model_levels": 17, "binarization": "none"},
    {"model_posterior": "categorical", "estimator": "gumbel_softmax", "temperature_decay": 1e-3},
    {"model_posterior": "categorical", "estimator": "score_function", "num_samples": 4},
    {"model_architecture": "conv", "model_conv_channels": (8, 16)},
])
def test_every_objective_learns(small_config, overrides):
    """Each objective, posterior and likelihood trains to a better test ELBO, finitely."""
    model = {k[6:]: v for k, v in overrides.items() if k.startswith("model_")}
    config = dataclasses.replace(
        small_config, model=dataclasses.replace(small_config.model, **model),
        **{k: v for k, v in overrides.items() if not k.startswith("model_")})
    data = prepare_data(validate(config))
    trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
    state, device_train, device_test = trainer.init(), trainer.place(data.train), trainer.place(data.test)
    before = float(trainer.evaluate(state, device_test, 0)["test_elbo"][0])
    for epoch in range(8):
        state, metrics = trainer.train_epoch(state, device_train, epoch)
        assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    after = float(trainer.evaluate(state, device_test, 8)["test_elbo"][0])
    assert after > before + 3.0, (before, after)


def test_kl_warmup_ramps_beta(small_config):
    """With warm-up over 2 epochs the β in use grows linearly from ~0 to the target."""
    config = dataclasses.replace(small_config, kl_warmup_epochs=2, betas=(2.0,))
    trainer, state, data = _fit(config, 0)
    state, metrics = trainer.train_epoch(state, trainer.place(data.train), 0)
    beta = np.asarray(metrics["beta"][0])
    steps = trainer.steps_per_epoch
    np.testing.assert_allclose(beta, 2.0 * np.arange(1, steps + 1) / (2 * steps), rtol=1e-6)


def test_dual_ascent_meets_the_rate_constraint(small_config):
    """With KL ≤ δ the multiplier β adapts until the rate settles near δ."""
    config = dataclasses.replace(small_config, kl_target=2.0, dual_learning_rate=0.05,
                                 betas=(1.0,), batch_size=50)
    data = prepare_data(validate(config))
    trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
    state, device_train = trainer.init(), trainer.place(data.train)
    rates = []
    for epoch in range(30):
        state, metrics = trainer.train_epoch(state, device_train, epoch)
        rates.append(float(np.mean(metrics["rate"])))
    assert abs(np.mean(rates[-5:]) - 2.0) < 0.5, rates[-5:]
    assert float(state.hyper["beta"][0]) != 1.0


def test_free_bits_keep_every_dimension_in_use(small_config):
    """With free bits λ, each latent dimension's batch-mean KL stays near or above λ."""
    config = dataclasses.replace(small_config, free_bits=1.0, betas=(4.0,), batch_size=50)
    trainer, state, data = _fit(config, 15)
    q = trainer.models(state)[0].encode(data.test)
    per_dim = 0.5 * np.mean(q.mean**2 + np.exp(q.log_var) - q.log_var - 1, axis=0)
    assert np.all(per_dim > 0.5), per_dim
