"""Flow posteriors on the stock VAE: q(z|x) = a diagonal Gaussian pushed through K steps.

Planar steps (Rezende & Mohamed 2015) take their parameters from the encoder,
one set per image; IAF steps (Kingma et al. 2016) share a MADE whose hidden
layer also receives a context computed from the encoder's features. log q is
exact by the change of variables (`vaejax.core.flows`); the stock objectives
train both (the KL by Monte Carlo from the flow's draws).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vaejax.config import ConfigError, ModelConfig
from vaejax.core.flows import MADE, FlowPosterior, Planar, iaf_step, planar_step
from vaejax.models.vae import VAE


class FlowVAE(VAE):
    """The stock VAE with `steps` planar or IAF steps after its diagonal posterior.

    Args:
      shape, config: as for `VAE` (the posterior must be "diagonal").
      flow: "planar" or "iaf".
      steps: K.
      made_hidden: width of each IAF step's MADE (default 2·latent_dim).
      rngs: initialisation keys.
    """

    def __init__(self, shape, config: ModelConfig, flow: str = "planar", steps: int = 10,
                 made_hidden: int | None = None, *, rngs: nnx.Rngs):
        if config.posterior != "diagonal":
            raise ConfigError("flow posteriors start from a diagonal Gaussian: --posterior diagonal")
        if flow not in ("planar", "iaf"):
            raise ConfigError(f"flow must be 'planar' or 'iaf', got {flow!r}")
        super().__init__(shape, config, rngs=rngs)
        d, h = config.latent_dim, config.hidden[-1]
        self.flow, self.steps = flow, steps
        if flow == "planar":
            self.flow_head = nnx.Linear(h, steps * (2 * d + 1), rngs=rngs)
            return
        m = made_hidden or 2 * d
        small = lambda *s: nnx.Param(0.01 * jax.random.normal(rngs.params(), (steps, *s)))  # noqa: E731
        # b_scale = 2: σ ≈ 0.88, so each step starts near the identity (Kingma et al.).
        self.made = nnx.List([small(d, m), small(m), small(m, d), small(d), small(m, d),
                              nnx.Param(jnp.full((steps, d), 2.0))])
        self.context = nnx.Linear(h, m, rngs=rngs)

    def posterior(self, features):
        base = super().posterior(features)
        if self.flow == "iaf":
            params = MADE(*(p[...] for p in self.made))
            return FlowPosterior(base, params, iaf_step, self.context(features), reverse=True)
        d = self.config.latent_dim
        out = self.flow_head(features).reshape(*features.shape[:-1], self.steps, 2 * d + 1)
        out = jnp.moveaxis(out, -2, 0)  # steps lead, for the scan
        return FlowPosterior(base, Planar(out[..., :d], out[..., d:2 * d], out[..., 2 * d]),
                             planar_step)
