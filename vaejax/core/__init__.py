"""The VAE mathematics as pure JAX functions (no Flax, no TensorFlow)."""
