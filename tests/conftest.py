"""Test setup: 8 simulated CPU devices (set before JAX starts) and a compilation cache."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the environment set-up above)

jax.config.update("jax_num_cpu_devices", 8)
# A persistent cache makes re-runs of the suite compile almost nothing.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("VALLE_JAX_TEST_CACHE",
                                 os.path.join(os.path.dirname(__file__), "..", ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
