"""vaejax: variational autoencoders in JAX.

The functional core is re-exported here, flat. Models (`vaejax.models`),
training (`vaejax.train`) and data (`vaejax.input_pipeline`) are imported
on demand so that `import vaejax` stays light.
"""

from vaejax.core.autoencoders import contractive_penalty, corrupt, sparse_penalty
from vaejax.core.discrete import (
    Categorical,
    categorical_log_prob,
    gumbel_softmax,
    kl_categorical,
    leave_one_out_baseline,
    score_function_surrogate,
    uniform_categorical_log_prob,
)
from vaejax.core.divergences import closed_form_kl, kl_divergence, register_kl
from vaejax.core.dreg import DregTerms, iwae_dreg, scale_gradient
from vaejax.core.flows import MADE, FlowPosterior, Planar, iaf_step, planar_step
from vaejax.core.gaussian import (
    diag_normal_entropy,
    diag_normal_log_prob,
    kl_diag_normals,
    kl_mvn_tril,
    kl_standard_normal,
    mvn_tril_entropy,
    mvn_tril_log_prob,
    reparameterize,
    reparameterize_tril,
    standard_normal_log_prob,
)
from vaejax.core.likelihoods import (
    bernoulli_log_likelihood,
    bits_per_dim,
    continuous_bernoulli_log_likelihood,
    continuous_bernoulli_mean,
    discretized_logistic_log_likelihood,
    discretized_logistic_mixture_log_likelihood,
    gaussian_log_likelihood,
)
from vaejax.core.hierarchical import HierarchicalTerms, hierarchical_elbo
from vaejax.core.linear_gaussian import LinearGaussian
from vaejax.core.objectives import (
    ElboTerms,
    elbo,
    importance_log_likelihood,
    iwae_bound,
    log_importance_weights,
)
from vaejax.core.quantization import (
    EmaCodebook,
    Quantized,
    codebook_perplexity,
    ema_codebook_update,
    vector_quantize,
)
from vaejax.core.posteriors import CholeskyGaussian, DiagonalGaussian, Posterior
from vaejax.core.priors import MixtureOfGaussians, Prior, StandardNormal, UniformCategorical

__version__ = "0.1.0"

__all__ = [
    "Categorical",
    "CholeskyGaussian",
    "DiagonalGaussian",
    "DregTerms",
    "EmaCodebook",
    "ElboTerms",
    "FlowPosterior",
    "HierarchicalTerms",
    "LinearGaussian",
    "MADE",
    "MixtureOfGaussians",
    "Planar",
    "Posterior",
    "Prior",
    "Quantized",
    "StandardNormal",
    "UniformCategorical",
    "bernoulli_log_likelihood",
    "bits_per_dim",
    "categorical_log_prob",
    "closed_form_kl",
    "codebook_perplexity",
    "continuous_bernoulli_log_likelihood",
    "continuous_bernoulli_mean",
    "contractive_penalty",
    "corrupt",
    "diag_normal_entropy",
    "diag_normal_log_prob",
    "discretized_logistic_log_likelihood",
    "discretized_logistic_mixture_log_likelihood",
    "elbo",
    "ema_codebook_update",
    "gaussian_log_likelihood",
    "gumbel_softmax",
    "hierarchical_elbo",
    "iaf_step",
    "importance_log_likelihood",
    "iwae_bound",
    "iwae_dreg",
    "kl_categorical",
    "kl_diag_normals",
    "kl_divergence",
    "kl_mvn_tril",
    "kl_standard_normal",
    "leave_one_out_baseline",
    "log_importance_weights",
    "mvn_tril_entropy",
    "mvn_tril_log_prob",
    "planar_step",
    "register_kl",
    "reparameterize",
    "reparameterize_tril",
    "scale_gradient",
    "score_function_surrogate",
    "sparse_penalty",
    "standard_normal_log_prob",
    "uniform_categorical_log_prob",
    "vector_quantize",
]
