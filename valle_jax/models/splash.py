"""Attention through Pallas's TPU splash (sparse flash) kernel: `model.attention = "splash"`.

The kernel takes a static mask (a numpy array, known at trace time) and per-position
segment ids (traced); key j is seen by query i when the static mask allows (i, j) and both
have the same segment id. Both models' masks have that form (`Mask`):
- static: a prefix-LM mask with `prefix` P: every query sees slots [0, P), and slots
  >= P causally (j <= i). The AR's P is its phoneme slots L; the NAR's is the whole
  sequence (full attention).
- segments: 1 for valid slots, 0 for padding (ragged lengths, per example). A valid query
  sees exactly the valid keys the models' dense masks allow; a padding query sees padding
  keys (itself at least, so no row is empty). Its output is garbage that nothing reads:
  padding slots are never keys of a valid query and their outputs are never scored.

The sequence is padded up to a multiple of 128 (the kernel's block; padding slots get
segment 0) and the kernel runs once per example (`jax.vmap`) on [N, T, H]. It does not
scale the logits, so q is multiplied by `scale` first (in q's dtype); QK^T, the softmax and
its product with V are float32 whatever the input dtype.

Where it runs: the kernel is a Mosaic (TPU) kernel. Off a TPU, `attention` runs it in
Pallas's interpret mode (`interpret=None` chooses it when `jax.default_backend()` is not
"tpu"): the kernel's own blocks, online softmax, masks and backward pass, interpreted (slow);
that is what the CPU tests compare with XLA's attention.
Training refuses "splash" off a TPU (`backend_problems`). The KV-cache paths (the AR's prefill
and its T=1 decode steps) keep XLA's attention: the layers pass them a dense mask.
XLA cannot partition a Mosaic call: on a TPU mesh of more than one device the call must run
inside a `shard_map`, not written yet: training refuses "splash" on more than one device.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib

Array = jax.Array
BLOCK = 128   # the kernel's query and key block (BlockSizes.get_default); sequences pad to it


@functools.partial(jax.tree_util.register_dataclass, data_fields=["valid"],
                   meta_fields=["prefix"])
@dataclasses.dataclass(frozen=True)
class Mask:
  """A prefix-LM mask over valid slots, in the form the splash kernel takes.

  valid  [B, T] bool  slots holding real tokens (keys and queries)
  prefix int          slots [0, prefix) are seen by every query, later ones causally;
                      prefix = T is full attention
  """
  valid: Array
  prefix: int


@functools.lru_cache(maxsize=32)
def _kernel(length: int, prefix: int, num_heads: int, interpret: bool):
  """The splash kernel for a padded `length` and `prefix`, built once per shape. Its block
  tables are concrete arrays even when first built inside a trace (a remat or scan of the
  blocks), so the cache never holds a tracer."""
  slot = np.arange(length)
  allowed = (slot[None, :] < prefix) | (slot[None, :] <= slot[:, None])       # [T, T]
  mask = splash_lib.MultiHeadMask([splash_lib.NumpyMask(allowed)] * num_heads)
  with jax.ensure_compile_time_eval():
    return splash_lib.make_splash_mha(mask, head_shards=1, q_seq_shards=1,
                                      interpret=interpret)


def attention(q: Array, k: Array, v: Array, mask: Mask, *, scale: float,
              interpret: bool | None = None) -> Array:
  """Splash attention. q, k, v [B, T, N, H] -> [B, T, N, H] (q's dtype).

  `interpret`: run Pallas's interpreter instead of compiling for a TPU; None chooses it off
  a TPU.
  """
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  b, t, n, _ = q.shape
  if mask.valid.shape != (b, t) or k.shape[1] != t:
    raise ValueError(f"splash attention is self-attention over the mask's slots: q {q.shape}, "
                     f"k {k.shape}, mask.valid {mask.valid.shape}.")
  padded = -(-t // BLOCK) * BLOCK
  def heads_first(x):                                               # [B, T, N, H] -> [B, N, Tp, H]
    return jnp.pad(x, [(0, 0), (0, padded - t), (0, 0), (0, 0)]).transpose(0, 2, 1, 3)
  segment = jnp.pad(mask.valid, [(0, 0), (0, padded - t)]).astype(jnp.int32)   # [B, Tp]
  kernel = _kernel(padded, mask.prefix, n, interpret)
  def one_example(q, k, v, segment):
    return kernel(q, k, v, segment_ids=splash_lib.SegmentIds(q=segment, kv=segment))
  out = jax.vmap(one_example)(heads_first(q * jnp.asarray(scale, q.dtype)), heads_first(k),
                              heads_first(v), segment)            # [B, N, Tp, H]
  return out.transpose(0, 2, 1, 3)[:, :t]


def backend_problems(attention_name: str) -> list[str]:
  """Why `attention_name` cannot train here (one line each; none for "xla" and "cudnn")."""
  if attention_name != "splash":
    return []
  if jax.default_backend() != "tpu":
    return [f"model.attention = 'splash' is a TPU kernel and this JAX backend is "
            f"{jax.default_backend()!r}; use 'xla' (or 'cudnn' on an NVIDIA GPU)"]
  if jax.device_count() > 1:
    return [f"model.attention = 'splash' runs on one TPU chip so far ({jax.device_count()} "
            "devices here: XLA cannot partition the kernel without a shard_map); use 'xla'"]
  return []
