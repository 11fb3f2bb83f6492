"""The trainer's contracts: PRNG streams, named checkpoints, metrics that say what they are,
active units per latent variable, light imports."""

import dataclasses
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import vaejax
from vaejax import evaluation, input_pipeline, objectives
from vaejax.checkpoints import Checkpointer
from vaejax.config import BINARIZATIONS, ModelConfig, TrainConfig
from vaejax.models import VAE
from vaejax.trainer import Trainer, streams


def test_streams_never_repeat_init_keys(small_config):
    """Models are built with nnx.Rngs(init), which draws fold_in(init, i): none of those is a
    training or evaluation key (built with nnx.Rngs(seed), the second init draw was)."""
    for seed in (0, 1, 7):
        init, train, evaluate = streams(jax.random.PRNGKey(seed))
        rngs = nnx.Rngs(init)
        drawn = {tuple(np.asarray(jax.random.key_data(rngs.params()))) for _ in range(200)}
        used = [train, evaluate] + [jax.random.fold_in(k, e) for k in (train, evaluate)
                                    for e in range(50)]
        assert not drawn & {tuple(np.asarray(k)) for k in used}
    trainer = Trainer(small_config, (8, 8, 1), 1497)
    params = jax.tree.map(lambda p: p[0], trainer.init().params)
    model = VAE((8, 8, 1), small_config.model, rngs=nnx.Rngs(streams(jax.random.PRNGKey(0))[0]))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(a, b)


class _Adam(NamedTuple):
    mu: np.ndarray
    nu: np.ndarray


class _Reordered(NamedTuple):
    nu: np.ndarray
    mu: np.ndarray


def test_checkpoints_restore_leaves_by_name(tmp_path):
    """Two leaves of one shape come back by name, even when the structure lists them in
    another order; a name the checkpoint lacks is one clear error."""
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(1, {"opt": _Adam(np.zeros(3), np.ones(3))})
    restored = checkpointer.restore(1, {"opt": _Reordered(np.full(3, 5.0), np.full(3, 5.0))})
    np.testing.assert_array_equal(restored["opt"].mu, np.zeros(3))
    np.testing.assert_array_equal(restored["opt"].nu, np.ones(3))
    try:
        checkpointer.restore(1, {"opt": {"mu": np.zeros(3), "velocity": np.zeros(3)}})
        raise AssertionError("restored a checkpoint with another name")
    except ValueError as error:
        assert "missing: opt/velocity" in str(error)
    checkpointer.close()


def test_gumbel_softmax_reports_the_discrete_elbo():
    """`elbo` is log p(x | the exact one-hot draw the same Gumbel noise gives) − KL, and the
    relaxed objective is reported under its own name."""
    config = ModelConfig(hidden=(32,), latent_dim=3, num_categories=4, posterior="categorical")
    model = VAE((8, 8, 1), config, rngs=nnx.Rngs(0))
    x = jnp.asarray(input_pipeline.load("digits", binarization="static").test.images[:20])
    key, hyper = jax.random.key(5), {"beta": 1.0, "temperature": 0.7}
    _, metrics = objectives.elbo()(model, objectives.Batch(x), key, hyper)
    q = model.encode(x)
    relaxed = vaejax.gumbel_softmax(key, q.logits[None], 0.7)
    gumbel = jax.random.gumbel(key, relaxed.shape)  # the noise behind `relaxed`
    one_hot = jax.nn.one_hot(jnp.argmax(q.logits[None] + gumbel, -1), 4)  # an exact draw from q
    kl = jnp.mean(q.kl_uniform())
    np.testing.assert_allclose(metrics["elbo"], jnp.mean(model.log_likelihood(one_hot, x)) - kl,
                               rtol=1e-6)
    np.testing.assert_allclose(metrics["relaxed_objective"],
                               jnp.mean(model.log_likelihood(relaxed, x)) - kl, rtol=1e-6)
    assert float(metrics["relaxed_objective"]) != float(metrics["elbo"])


def test_active_units_count_latent_variables_not_one_hot_columns():
    """3 categorical variables of 4 categories, one of them informative: 1 active unit."""
    rng = np.random.default_rng(0)
    probs = np.full((1, 500, 3, 4), 0.25)
    probs[0, :, 0] = np.eye(4)[rng.integers(0, 4, 500)]
    assert evaluation.active_units(probs).tolist() == [1]
    gaussian = np.zeros((1, 500, 5))
    gaussian[0, :, [1, 3]] = rng.normal(size=(2, 500))
    assert evaluation.active_units(gaussian).tolist() == [2]


def test_categorical_active_units_of_a_trained_run(small_config):
    """Counted per variable, never above the number of latent variables."""
    model = dataclasses.replace(small_config.model, posterior="categorical", latent_dim=3,
                                num_categories=5)
    config = dataclasses.replace(small_config, model=model)
    trainer = Trainer(config, (8, 8, 1), 1497)
    state = trainer.init()
    data = input_pipeline.load("digits", binarization="dynamic")
    for epoch in range(3):
        state, _ = trainer.train_epoch(state, trainer.place(data.train.images), epoch)
    codes = evaluation.latent_codes(trainer, state, data.test.images)
    assert codes.shape == (1, 300, 3, 5)
    assert 0 <= int(evaluation.active_units(codes)[0]) <= 3


def test_binarization_is_defined_once():
    assert BINARIZATIONS is input_pipeline.BINARIZATIONS
    assert TrainConfig().binarization in BINARIZATIONS


def test_light_imports():
    """import vaejax pulls in neither Flax nor matplotlib; vaejax.evaluation no matplotlib;
    vaejax.train no TensorBoard writer until it trains."""
    code = ("import sys, vaejax; assert 'flax' not in sys.modules and 'matplotlib' not in "
            "sys.modules; import vaejax.evaluation; assert 'matplotlib' not in sys.modules; "
            "import vaejax.train; assert 'tensorboardX' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
