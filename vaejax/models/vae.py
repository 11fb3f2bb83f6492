"""The stock VAE: the encoders, decoders and heads a ModelConfig describes.

Images are (..., H, W, C). The encoder returns q(z|x) as a core posterior pytree;
the decoder returns the likelihood's parameters; `VAE.log_likelihood(z, x)` is
the log p(x|z) the core objectives take; `VAE.prior` is N(0, I), the uniform
categorical, or a learned prior module passed as `prior=`.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

import vaejax
from vaejax.config import ModelConfig
from vaejax.models.conv import Conv, ConvTranspose

_ACTIVATIONS = {
    "relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu, "softplus": jax.nn.softplus,
    "elu": jax.nn.elu, "leaky_relu": jax.nn.leaky_relu, "silu": jax.nn.silu,
}


class MLP(nnx.Module):
    """Dense layers, each followed by the activation."""

    def __init__(self, sizes: tuple[int, ...], activation: str, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        self.activation = _ACTIVATIONS[activation]

    def __call__(self, x):
        for layer in self.layers:
            x = self.activation(layer(x))
        return x


def _downsampled(size: int, steps: int) -> int:
    for _ in range(steps):
        size = math.ceil(size / 2)
    return size


class ConvTrunk(nnx.Module):
    """Stride-2 convolutions, then flatten and an MLP: (..., H, W, C) → (..., hidden)."""

    def __init__(self, shape, config: ModelConfig, *, rngs: nnx.Rngs):
        h, w, c = shape
        chans = (c, *config.conv_channels)
        self.convs = nnx.List([Conv(a, b, (3, 3), strides=2, rngs=rngs)
                               for a, b in zip(chans, chans[1:])])
        n = len(config.conv_channels)
        flat = _downsampled(h, n) * _downsampled(w, n) * chans[-1]
        self.mlp = MLP((flat, *config.hidden), config.activation, rngs=rngs)
        self.activation = _ACTIVATIONS[config.activation]

    def __call__(self, x):
        for conv in self.convs:
            x = self.activation(conv(x))
        return self.mlp(x.reshape(*x.shape[:-3], -1))


class ConvHead(nnx.Module):
    """Mirror of ConvTrunk: (..., hidden) → (..., H, W, out_channels), cropped to H×W."""

    def __init__(self, shape, out_channels: int, config: ModelConfig, *, rngs: nnx.Rngs):
        h, w, _ = shape
        n = len(config.conv_channels)
        self.grid = (_downsampled(h, n), _downsampled(w, n), config.conv_channels[-1])
        self.image = (h, w)
        # The encoder's dense widths reversed: its input is the last of them.
        self.mlp = MLP((*config.hidden[::-1], math.prod(self.grid)), config.activation, rngs=rngs)
        chans = config.conv_channels[::-1]
        self.deconvs = nnx.List([ConvTranspose(a, b, (3, 3), strides=2, rngs=rngs)
                                 for a, b in zip(chans, (*chans[1:], chans[-1]))])
        self.out = Conv(chans[-1], out_channels, (3, 3), rngs=rngs)
        self.activation = _ACTIVATIONS[config.activation]

    def __call__(self, hidden):
        x = self.mlp(hidden).reshape(*hidden.shape[:-1], *self.grid)
        for deconv in self.deconvs:
            x = self.activation(deconv(x))
        return self.out(x[..., :self.image[0], :self.image[1], :])


def _flatten_image(x):
    return x.reshape(*x.shape[:-3], -1)


def params_per_value(config: ModelConfig) -> int:
    """How many decoder outputs parameterise the likelihood of one pixel value."""
    return {"logistic": 2, "logistic_mixture": 3 * config.mixture_components}.get(
        config.likelihood, 1)


class VAE(nnx.Module):
    """Encoder, posterior head, decoder and likelihood for images of `shape` (H, W, C).

    Args:
      shape: (H, W, C).
      config: the architecture.
      rngs: initialisation keys.
      prior: a module whose call returns p(z) (e.g. `GaussianMixturePrior`);
        by default N(0, I), or uniform over the categories of a categorical latent.
    """

    def __init__(self, shape: tuple[int, int, int], config: ModelConfig, *, rngs: nnx.Rngs,
                 prior: nnx.Module | None = None):
        self.config = config
        self.learned_prior = prior
        self.shape = tuple(shape)
        d, pixels = config.latent_dim, math.prod(shape)
        self.params_per_value = params_per_value(config)
        self.code_size = d * config.num_categories if config.posterior == "categorical" else d
        head_size = {"diagonal": 2 * d, "full": d + d * (d + 1) // 2,
                     "categorical": self.code_size}[config.posterior]
        if config.architecture == "conv":
            self.encoder = ConvTrunk(shape, config, rngs=rngs)
            self.decoder = ConvHead(shape, shape[-1] * self.params_per_value, config, rngs=rngs)
            self.decoder_input = MLP((self.code_size, config.hidden[-1]), config.activation, rngs=rngs)
        else:
            self.encoder = MLP((pixels, *config.hidden), config.activation, rngs=rngs)
            self.decoder = MLP((self.code_size, *config.hidden[::-1]), config.activation, rngs=rngs)
            self.decoder_output = nnx.Linear(config.hidden[0], pixels * self.params_per_value,
                                             rngs=rngs)
        self.posterior_head = nnx.Linear(config.hidden[-1], head_size, rngs=rngs)
        if config.learned_scale:
            self.log_scale = nnx.Param(jnp.zeros(shape))

    def features(self, x):
        """The encoder's last hidden layer, (..., hidden[-1])."""
        return self.encoder(_flatten_image(x) if self.config.architecture == "mlp" else x)

    def encode(self, x):
        """q(z|x): a DiagonalGaussian, CholeskyGaussian or Categorical (logits (..., d, K))."""
        return self.posterior(self.features(x))

    def posterior(self, features):
        """q(z|x) from the encoder's features."""
        out = self.posterior_head(features)
        d = self.config.latent_dim
        if self.config.posterior == "diagonal":
            return vaejax.DiagonalGaussian(out[..., :d], out[..., d:])
        if self.config.posterior == "categorical":
            return vaejax.Categorical(out.reshape(*out.shape[:-1], d, self.config.num_categories))
        rows, cols = jnp.tril_indices(d)
        # A softplus diagonal keeps the Cholesky factor valid for any network output.
        entries = jnp.where(rows == cols, jax.nn.softplus(out[..., d:]) + 1e-4, out[..., d:])
        tril = jnp.zeros((*out.shape[:-1], d, d), out.dtype).at[..., rows, cols].set(entries)
        return vaejax.CholeskyGaussian(out[..., :d], tril)

    def decode(self, z):
        """The likelihood's parameters: logits or means, (..., H, W, C); for the logistic
        likelihoods (..., H, W, C, P): mean and log-scale, or M logits, means, log-scales."""
        if self.config.posterior == "categorical":
            z = z.reshape(*z.shape[:-2], -1)
        if self.config.architecture == "conv":
            out = self.decoder(self.decoder_input(z))
            out = out.reshape(*out.shape[:-3], *self.shape, self.params_per_value)
        else:
            out = self.decoder_output(self.decoder(z))
            out = out.reshape(*out.shape[:-1], *self.shape, self.params_per_value)
        return out[..., 0] if self.params_per_value == 1 else out

    def log_likelihood(self, z, x):
        """log p(x|z) summed over the image; leading axes of z broadcast against x."""
        # Summed over flat pixels: XLA's CPU backend runs elementwise work over a
        # trailing channel axis of size one many times slower.
        params, x = self.decode(z), _flatten_image(x)
        params = (_flatten_image(params) if self.params_per_value == 1
                  else params.reshape(*params.shape[:-4], -1, self.params_per_value))
        kind, levels = self.config.likelihood, self.config.levels
        if kind == "logistic":
            return vaejax.discretized_logistic_log_likelihood(params[..., 0], params[..., 1], x,
                                                              levels)
        if kind == "logistic_mixture":
            logits, means, log_scales = jnp.split(params, 3, axis=-1)
            return vaejax.discretized_logistic_mixture_log_likelihood(logits, means, log_scales, x,
                                                                      levels)
        if kind == "bernoulli":
            return vaejax.bernoulli_log_likelihood(params, x)
        if kind == "continuous_bernoulli":
            return vaejax.continuous_bernoulli_log_likelihood(params, x)
        log_scale = (self.log_scale[...].reshape(-1) if self.config.learned_scale
                     else math.log(self.config.gaussian_scale))
        return vaejax.gaussian_log_likelihood(params, x, log_scale)

    def mean_image(self, z):
        """E[x|z], for pictures of reconstructions and samples."""
        params = self.decode(z)
        if self.config.likelihood == "bernoulli":
            return jax.nn.sigmoid(params)
        if self.config.likelihood == "continuous_bernoulli":
            return vaejax.continuous_bernoulli_mean(params)
        if self.config.likelihood == "logistic":
            params = params[..., 0]
        elif self.config.likelihood == "logistic_mixture":  # the mixture's mean, clipped
            logits, means, _ = jnp.split(params, 3, axis=-1)
            params = jnp.sum(jax.nn.softmax(logits, axis=-1) * means, axis=-1)
        return jnp.clip(params, 0.0, 1.0)

    @property
    def prior(self) -> vaejax.Prior:
        if self.learned_prior is not None:
            return self.learned_prior()
        if self.config.posterior == "categorical":
            return vaejax.UniformCategorical(self.config.latent_dim, self.config.num_categories)
        return vaejax.StandardNormal(self.config.latent_dim)
