"""--precision bf16: bfloat16 products, float32 parameters, optimizer state and loss; the ELBO
of a trained model moves by little, and training still learns."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaejax import cli, models
from vaejax.config import ConfigError, validate
from vaejax.models import Conv, ConvTranspose
from vaejax.train import load_run, prepare_data
from vaejax.trainer import Trainer


def test_bf16_rounds_the_operands_of_products_and_returns_float32():
    layer = models.with_precision(nnx.Linear(5, 3, rngs=nnx.Rngs(0)), "bf16")
    x = jax.random.normal(jax.random.key(1), (4, 5))
    rounded = (x.astype(jnp.bfloat16).astype(jnp.float32)
               @ layer.kernel[...].astype(jnp.bfloat16).astype(jnp.float32))
    y = layer(x)
    assert y.dtype == jnp.float32 and layer.kernel[...].dtype == jnp.float32
    np.testing.assert_allclose(y, rounded, rtol=1e-6, atol=1e-6)  # float32 sums of bf16 values
    assert not np.allclose(y, x @ layer.kernel[...], rtol=1e-6, atol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("layer", [
    lambda: Conv(3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0)),
    lambda: ConvTranspose(3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0)),
])
def test_vaejax_convolutions_follow_the_precision(layer):
    """The fast convolutions match nnx's own at bf16, in value and in float32 gradients."""
    ours = models.with_precision(layer(), "bf16")
    flax_layer = (nnx.Conv if isinstance(ours, Conv) else nnx.ConvTranspose)(
        3, 4, (3, 3), strides=2, dtype=jnp.bfloat16, preferred_element_type=jnp.float32,
        rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
    y = ours(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, flax_layer(x), rtol=2e-2, atol=2e-2)
    exact = (nnx.Conv if isinstance(ours, Conv) else nnx.ConvTranspose)(
        3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0))(x)
    assert 0 < float(jnp.max(jnp.abs(y - exact))) < 0.05  # rounded, not float32

    def loss(model):
        return jnp.sum(model(x) ** 2)

    grads = nnx.grad(loss)(ours)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    reference = nnx.grad(loss)(flax_layer)
    np.testing.assert_allclose(grads.kernel[...], reference.kernel[...], rtol=5e-2, atol=5e-2)


def _fit(config, epochs):
    data = prepare_data(validate(config))
    trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
    state, train = trainer.init(), trainer.place(data.train)
    test = trainer.place(data.test)
    elbos = []
    for epoch in range(epochs):
        state, _ = trainer.train_epoch(state, train, epoch)
        elbos.append(float(trainer.evaluate(state, test, epoch)["test_elbo"][0]))
    return trainer, state, data, elbos


def test_the_bf16_elbo_of_a_trained_model_is_within_a_hundredth_of_a_nat(small_config):
    """The same parameters and noise scored with bf16 products: |Δ test ELBO| < 0.01 nats
    (measured 0.0003 of a −26.1-nat ELBO), and the bf16 trainer keeps float32 state."""
    config = dataclasses.replace(small_config, epochs=20)
    trainer, state, data, _ = _fit(config, 20)
    bf16 = Trainer(dataclasses.replace(config, precision="bf16"), data.train.shape[1:],
                   data.train.shape[0])
    test = trainer.place(data.test)
    exact = trainer.evaluate(state, test, 19)["test_elbo"][0]
    rounded = bf16.evaluate(state, test, 19)["test_elbo"][0]
    assert 0 < abs(float(rounded - exact)) < 0.01, (rounded, exact)
    fresh = bf16.init()
    assert {x.dtype for x in jax.tree.leaves((fresh.params, fresh.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}


def test_training_in_bf16_learns_as_float32_does(small_config):
    config = dataclasses.replace(small_config, epochs=20)
    *_, exact = _fit(config, 20)
    *_, rounded = _fit(dataclasses.replace(config, precision="bf16"), 20)
    assert rounded[-1] > rounded[0] + 5.0
    assert abs(rounded[-1] - exact[-1]) < 0.1, (rounded[-1], exact[-1])  # measured 0.003


def test_an_unknown_precision_or_one_without_effect_is_refused(small_config):
    with pytest.raises(ConfigError, match="precision must be one of float32, bf16"):
        validate(dataclasses.replace(small_config, precision="fp8"))

    class Raw(nnx.Module):  # products written with jnp: nothing that bf16 could set
        def __init__(self, shape, rngs):
            self.w = nnx.Param(jnp.zeros((4, 4)))

    with pytest.raises(ConfigError, match="no Flax layer with a computation dtype"):
        Trainer(dataclasses.replace(small_config, precision="bf16"), (8, 8, 1), 100,
                model_fn=Raw)


def _linears(model):
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Linear)]


def test_the_cli_trains_in_bf16_and_records_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--precision", "bf16", "--hidden", "32", "--latent-dim", "2",
                     "--epochs", "1", "--workdir", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16"
    loaded = load_run(run).models[0]  # rebuilt as trained
    assert {layer.dtype for layer in _linears(loaded)} == {jnp.bfloat16}
    assert cli.main(["train", "--precision", "fp16", "--workdir", str(tmp_path / "bad")]) != 0
    assert "precision must be one of float32, bf16" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
