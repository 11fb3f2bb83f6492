"""Test-set evaluation of trained models: importance-sampled log p(x), active units,
and a linear probe on the latent means. Any model of the `vaejax.models.Model`
contract is evaluated the same way: q from `encode`, p(z) from `prior`; a conditional
model given the images' labels (`objectives.conditioned`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import vaejax
from vaejax.objectives import conditioned


def _variables(state):
    return state.params, state.rest


@functools.lru_cache(maxsize=8)
def _compiled_estimator(trainer, num_samples: int, chunk_size: int):
    """One jitted estimator per (trainer, K, chunk), so repeated evaluations compile once."""
    def estimate(variables, x, y, key):
        model = conditioned(trainer.model(*variables), y)
        return vaejax.importance_log_likelihood(
            key, x, model.encode(x), model.log_likelihood, num_samples, chunk_size,
            model.prior.log_prob)

    return jax.jit(trainer.per_model(estimate, (0, None, None, None)))


def _padded(t, size: int):
    """t with zero rows appended to `size` rows: one batch shape, one compilation."""
    return t if t is None or len(t) == size else np.concatenate(
        [t, np.zeros((size - len(t), *t.shape[1:]), t.dtype)])


def importance_log_likelihood(trainer, state, images: np.ndarray, *, num_samples: int = 5000,
                              chunk_size: int = 100, batch_size: int = 100, seed: int = 0,
                              progress: bool = True, labels: np.ndarray | None = None
                              ) -> np.ndarray:
    """log p(x) of each test image under each model, K importance samples from q(z|x)
    (log p(x|y) of a conditional model, given `labels`).

    The test set is processed `batch_size` images at a time by one compiled
    function (mapped over models, K drawn `chunk_size` at a time on the device).

    Returns:
      estimates, shape (models, N).
    """
    estimate = _compiled_estimator(trainer, num_samples, chunk_size)
    starts = range(0, images.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"log p(x), K={num_samples}", unit="batch")
    key = jax.random.PRNGKey(seed)
    out = []
    for i, start in enumerate(starts):
        x = images[start:start + batch_size]
        y = None if labels is None else labels[start:start + batch_size]
        values = estimate(_variables(state), _padded(x, batch_size), _padded(y, batch_size),
                          jax.random.fold_in(key, i))
        out.append(np.asarray(values)[:, :len(x)])
    return np.concatenate(out, axis=1)


@functools.lru_cache(maxsize=8)
def _compiled_codes(trainer):
    def codes(variables, x, y):
        return conditioned(trainer.model(*variables), y).encode(x).mean

    return jax.jit(trainer.per_model(codes, (0, None, None)))


def latent_codes(trainer, state, images: np.ndarray, batch_size: int = 1000,
                 labels: np.ndarray | None = None) -> np.ndarray:
    """E_q[z|x] of each image, shape (models, N, *event): means, or category probabilities
    (E_q[z|x, y] of a conditional model, given `labels`)."""
    codes = _compiled_codes(trainer)
    return np.concatenate([np.asarray(codes(
        _variables(state), jnp.asarray(images[i:i + batch_size]),
        None if labels is None else jnp.asarray(labels[i:i + batch_size])))
        for i in range(0, images.shape[0], batch_size)], axis=1)


def active_units(codes: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Latent variables with Cov_x(E_q[z|x]) > threshold (Burda et al. 2016), per model.

    A variable is one entry of the first event axis: a Gaussian dimension, or a
    categorical variable, whose activity is the summed variance of its K
    category probabilities (the trace of its covariance).

    Args:
      codes: E_q[z|x], shape (models, N, d, ...).
      threshold: the variance above which a unit counts as active.

    Returns:
      counts, shape (models,).
    """
    return np.sum(unit_variances(codes) > threshold, axis=-1)


def unit_variances(codes: np.ndarray) -> np.ndarray:
    """Cov_x(E_q[z|x]) of each latent variable (summed over a categorical's K probabilities):
    codes (models, N, d, ...) → (models, d)."""
    variance = np.var(codes, axis=1)
    return variance.reshape(*variance.shape[:2], -1).sum(axis=-1)


def linear_probe_accuracy(train_codes, train_labels, test_codes, test_labels) -> float:
    """Test accuracy of a logistic regression fitted on the (flattened) training codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_codes = np.reshape(train_codes, (len(train_codes), -1))
    test_codes = np.reshape(test_codes, (len(test_codes), -1))
    scaler = StandardScaler().fit(train_codes)
    probe = LogisticRegression(max_iter=2000).fit(scaler.transform(train_codes), train_labels)
    return float(probe.score(scaler.transform(test_codes), test_labels))


def code_usage(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How the images use a categorical latent's K categories (a VQ-VAE's codebook), per model.

    Each image's code is the most probable category of each of its n variables.

    Args:
      codes: category probabilities E_q[z|x], shape (models, N, n, K).

    Returns:
      (perplexity exp H of the picked categories' frequencies, 1 to K; the number of
      categories no image picks), each shape (models,).
    """
    num_codes = codes.shape[-1]
    picks = np.argmax(codes, axis=-1).reshape(codes.shape[0], -1)
    perplexity = [float(vaejax.codebook_perplexity(p, num_codes)) for p in picks]
    unused = [num_codes - len(np.unique(p)) for p in picks]
    return np.array(perplexity), np.array(unused)
