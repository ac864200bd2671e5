import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Catch silent broadcasting mistakes in the math (as Equinox's tests do).
jax.config.update("jax_numpy_rank_promotion", "raise")
