import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Catch silent broadcasting mistakes in the math (as Equinox's tests do).
jax.config.update("jax_numpy_rank_promotion", "raise")

# Many tests build a fresh engine for the same tiny model; its step functions lower to the
# same programs, which a persistent compilation cache (fresh per test session) compiles once.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jaxclust-tests-xla-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
