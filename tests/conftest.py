import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Catch silent broadcasting mistakes in the math (as Equinox's tests do).
jax.config.update("jax_numpy_rank_promotion", "raise")

# Many tests build a fresh engine for the same tiny model; its step functions lower to the
# same programs, which a persistent compilation cache (fresh per test session, shared by the
# workers of one pytest-xdist run) compiles once.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _RUN:
  _CACHE = os.path.join(tempfile.gettempdir(), f"jaxclust-tests-xla-{_RUN}")
  os.makedirs(_CACHE, exist_ok=True)
else:
  _CACHE = tempfile.mkdtemp(prefix="jaxclust-tests-xla-")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
