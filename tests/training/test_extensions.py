"""The open training layer: a model ModelConfig cannot describe, a user objective, a
user optimizer and a learned prior, each through the one compiled trainer."""

import dataclasses
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vaejax
from vaejax import evaluation, input_pipeline, models, objectives
from vaejax.cli import main
from vaejax.config import ModelConfig
from vaejax.train import NonFiniteLossError, RunError, initial_params, load_run, train_and_evaluate
from vaejax.trainer import Trainer

from .conftest import SMALL, interrupted_at, run_on_host_devices

LATENT = 4


class ResidualBlock(nnx.Module):
    # No conv bias before batch norm: its gradient is zero in exact arithmetic, so
    # Adam would turn float round-off into full-size steps.
    def __init__(self, channels: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, channels, (3, 3), use_bias=False, rngs=rngs)
        self.norm1 = nnx.BatchNorm(channels, rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), use_bias=False, rngs=rngs)
        self.norm2 = nnx.BatchNorm(channels, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        return jax.nn.relu(x + self.norm2(self.conv2(h)))


class ResNetVAE(nnx.Module):
    """A residual convolutional encoder with batch norm and a decoder of its own design."""

    def __init__(self, image_shape, rngs: nnx.Rngs, channels: int = 8):
        h, w, c = image_shape
        self.image_shape = tuple(image_shape)
        self.stem = nnx.Conv(c, channels, (3, 3), rngs=rngs)
        self.block = ResidualBlock(channels, rngs)
        self.head = nnx.Linear(h * w * channels, 2 * LATENT, rngs=rngs)
        self.hidden = nnx.Linear(LATENT, 64, rngs=rngs)
        self.out = nnx.Linear(64, h * w * c, rngs=rngs)

    def encode(self, x):
        h = self.block(jax.nn.relu(self.stem(x)))
        out = self.head(h.reshape(*h.shape[:-3], -1))
        return vaejax.DiagonalGaussian(out[..., :LATENT], out[..., LATENT:])

    def decode(self, z):
        logits = self.out(jnp.tanh(self.hidden(z)))
        return logits.reshape(*logits.shape[:-1], *self.image_shape)

    def log_likelihood(self, z, x):
        return vaejax.bernoulli_log_likelihood(self.decode(z), x, event_ndims=3)

    @property
    def prior(self):
        return vaejax.StandardNormal(LATENT)

    def mean_image(self, z):
        return jax.nn.sigmoid(self.decode(z))


def resnet_vae(image_shape, rngs):
    return ResNetVAE(image_shape, rngs)


models.register("test-resnet", resnet_vae)
RESNET = dataclasses.replace(SMALL, model=ModelConfig(family="test-resnet"), seeds=(0, 1), epochs=4)


def _checkpoint_leaves(workdir):
    run = load_run(workdir)
    return run.epoch, jax.tree.leaves(jax.device_get(run.state))


def test_user_model_trains_resumes_evaluates_and_loads(tmp_path, monkeypatch):
    """A registered user model: whole-epoch scans, 2 models vmapped, bitwise resume,
    importance-sampled evaluation from the CLI, and load_run back into Python."""
    assert isinstance(ResNetVAE((8, 8, 1), nnx.Rngs(0)), models.Model)
    whole = train_and_evaluate(RESNET, tmp_path / "whole", progress=False)
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    first = [r["test_elbo"] for r in records if r["epoch"] == 1]
    assert len(whole["models"]) == 2 and all(np.isfinite(whole["test_elbo"]))
    assert all(a > b + 3.0 for a, b in zip(whole["test_elbo"], first))

    with interrupted_at(2):
        train_and_evaluate(RESNET, tmp_path / "broken", progress=False)
    train_and_evaluate(RESNET, tmp_path / "broken", resume=True, progress=False)
    epoch_a, a = _checkpoint_leaves(tmp_path / "whole")
    epoch_b, b = _checkpoint_leaves(tmp_path / "broken")
    assert epoch_a == epoch_b == 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)

    run = load_run(tmp_path / "whole")
    # The batch statistics are carried and restored: they moved away from their init.
    stats = jax.tree.leaves(run.state.rest)
    assert stats and any(np.abs(np.asarray(s)).max() > 0 for s in stats)
    assert not any(np.all(np.asarray(s) == 1.0) for s in stats if np.ndim(s) == 2)

    assert main(["evaluate", "--workdir", str(tmp_path / "whole"), "-k", "100",
                 "--no-progress"]) == 0
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert all(lp > e for lp, e in zip(summary["test_log_likelihood"], summary["test_elbo"]))

    # load_run needs no data: the data set loader is never called.
    monkeypatch.setattr(input_pipeline, "load", lambda *a, **k: pytest.fail("data was loaded"))
    run = load_run(tmp_path / "whole")
    assert len(run.models) == 2 and isinstance(run.model, ResNetVAE)
    x = jnp.asarray(input_pipeline._load_digits("test")[0][:5])
    q = run.model.encode(x)
    assert q.mean.shape == (5, LATENT) and run.model.decode(q.mode()).shape == (5, 8, 8, 1)
    assert run.model.mean_image(run.model.prior.sample(jax.random.key(0), 3)).shape == (3, 8, 8, 1)


def test_unregistered_model_fn_is_recorded_and_needed_again(tmp_path):
    """A run given model_fn records family "custom"; resuming or loading without it is refused."""
    config = dataclasses.replace(SMALL, epochs=1)
    train_and_evaluate(config, tmp_path / "run", model_fn=resnet_vae, progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["family"] == "custom"
    with pytest.raises(RunError, match="model_fn"):
        load_run(tmp_path / "run")
    assert isinstance(load_run(tmp_path / "run", model_fn=resnet_vae).model, ResNetVAE)
    assert main(["evaluate", "--workdir", str(tmp_path / "run"), "--no-progress"]) == 2


def test_user_model_on_eight_devices_equals_one():
    """The user model's batch sharded over 8 host devices gives the 1-device parameters."""
    script = textwrap.dedent("""
        import dataclasses, jax, numpy as np
        from tests.training.test_extensions import RESNET
        from vaejax.train import prepare_data
        from vaejax.trainer import Trainer
        assert len(jax.devices()) == 8
        results = []
        for devices in (1, 8):
            config = dataclasses.replace(RESNET, devices=devices, batch_size=64)
            data = prepare_data(config)
            trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
            state, train = trainer.init(), trainer.place(data.train_batch())
            for epoch in range(2):
                state, _ = trainer.train_epoch(state, train, epoch)
            assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == devices
            results.append([np.asarray(x) for x in jax.tree.leaves((state.params, state.rest))])
        for a, b in zip(*results):
            # Round-off of the 8-way gradient sum differs by host; Adam divides each gradient
            # by its own scale, so on near-zero gradients it moves a parameter by up to lr
            # (1e-3) a step: 2 epochs end up to 6.4e-5 apart on an Intel Xeon host.
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4)
        print("sharded run matches")
    """)
    assert "sharded run matches" in run_on_host_devices(script)


def denoising_elbo(model, batch, key, hyper):
    """ELBO of the clean image given the encoding of a masked one."""
    noise_key, key = jax.random.split(key)
    q = model.encode(vaejax.corrupt(noise_key, batch.x, 0.3))
    terms = vaejax.elbo(key, batch.x, q, model.log_likelihood, prior=model.prior)
    return jnp.mean(terms.loss), {"elbo": jnp.mean(terms.elbo), "rate": jnp.mean(terms.kl)}


def test_user_objective_and_optimizer_train_the_stock_model(tmp_path):
    """objective= and optimizer= replace the config's; config.json records them as custom."""
    config = dataclasses.replace(SMALL, epochs=6)
    summary = train_and_evaluate(config, tmp_path / "run", objective=denoising_elbo,
                                 optimizer=optax.adamw(3e-3, weight_decay=1e-4), progress=False)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (stored["objective"], stored["optimizer"]) == ("custom", "custom")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert "train_distortion" not in records[0] and "train_rate" in records[0]
    assert records[-1]["test_elbo"] > records[0]["test_elbo"] + 3.0
    stock = train_and_evaluate(config, tmp_path / "stock", progress=False)
    assert summary["test_elbo"] != stock["test_elbo"]
    with pytest.raises(Exception, match="objective"):  # resuming needs the objective again
        train_and_evaluate(dataclasses.replace(config, objective="custom", optimizer="custom",
                                               epochs=7), tmp_path / "run", resume=True,
                           progress=False)
    run = load_run(tmp_path / "run")  # the models load without the objective or optimizer
    assert run.state.opt_state is None and run.model.encode(jnp.zeros((1, 8, 8, 1))).mean.shape == (1, 4)


def test_learned_mixture_prior_trains_with_monte_carlo_kl(tmp_path):
    """A VAE with a learned mixture-of-Gaussians prior: no closed-form KL, so the objective
    estimates it from the posterior's draws; the prior's parameters are trained."""
    def model_fn(shape, rngs):
        prior = models.GaussianMixturePrior(5, SMALL.model.latent_dim, rngs=rngs)
        return models.VAE(shape, SMALL.model, rngs=rngs, prior=prior)

    model = model_fn((8, 8, 1), nnx.Rngs(0))
    assert vaejax.closed_form_kl(model.encode(jnp.zeros((1, 8, 8, 1))), model.prior) is None
    config = dataclasses.replace(SMALL, epochs=8)
    train_and_evaluate(config, tmp_path / "run", model_fn=model_fn, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert records[-1]["test_elbo"] > records[0]["test_elbo"] + 3.0
    run = load_run(tmp_path / "run", model_fn=model_fn)
    prior = run.model.prior
    assert isinstance(prior, vaejax.MixtureOfGaussians)
    initial = model_fn((8, 8, 1), nnx.Rngs(0)).prior
    assert not np.allclose(prior.means, initial.means) and not np.allclose(prior.logits, 0.0)
    x = jnp.asarray(input_pipeline.load("digits", binarization="dynamic").test.images[:50])
    log_px = evaluation.importance_log_likelihood(run.trainer, run.state, np.asarray(x),
                                                  num_samples=200, batch_size=50, progress=False)
    elbo = objectives.eval_terms(run.model, x, jax.random.key(0)).elbo
    assert float(log_px.mean()) > float(jnp.mean(elbo))


def test_labels_reach_the_objective(tmp_path):
    """The batch carries the data set's labels, in the whole-epoch scan and stepwise alike."""
    elbo = objectives.elbo()

    def with_labels(model, batch, key, hyper):
        loss, metrics = elbo(model, batch, key, hyper)
        return loss, dict(metrics, label_mean=jnp.mean(batch.y.astype(jnp.float32)))

    labels = input_pipeline.load("digits").train.labels
    config = dataclasses.replace(SMALL, epochs=1, batch_size=1497)  # one batch: every label
    for stepwise in (False, True):
        run = tmp_path / f"run-{stepwise}"
        train_and_evaluate(config, run, objective=with_labels, stepwise=stepwise, progress=False)
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        assert record["train_label_mean"] == pytest.approx(labels.mean(), rel=1e-6)


def test_user_model_init_from_figures_and_non_finite_stop(tmp_path):
    """--init-from copies a user model's parameters by name; figures are drawn; a NaN loss
    stops the run with the last good checkpoint kept."""
    source = tmp_path / "source"
    config = dataclasses.replace(RESNET, epochs=1)
    # Stepwise: on CPU a convolution's backward pass is far slower inside lax.scan.
    train_and_evaluate(config, source, stepwise=True, progress=False)
    for name in ("samples.png", "reconstructions.png", "curves.png"):
        assert (source / name).stat().st_size > 0
    warm = dataclasses.replace(config, init_from=str(source), learning_rate=1e-4)
    trainer = Trainer(warm, (8, 8, 1), 1497)
    params = initial_params(warm, trainer)
    for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(load_run(source).state.params)):
        np.testing.assert_array_equal(ours, theirs)

    def nan_objective(model, batch, key, hyper):
        loss, metrics = objectives.elbo()(model, batch, key, hyper)
        return loss * jnp.nan, metrics

    with pytest.raises(NonFiniteLossError, match="non-finite in epoch 1"):
        train_and_evaluate(config, tmp_path / "nan", objective=nan_objective, stepwise=True,
                           progress=False)
