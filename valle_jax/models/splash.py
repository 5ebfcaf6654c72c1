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
XLA cannot partition a Mosaic call, so under an ambient mesh (`jax.set_mesh`) with data, fsdp
or tensor axes of size > 1 the kernel runs in a `shard_map`: the batch split over data x fsdp,
the heads over tensor (`sharding.LOGICAL_RULES`), one call per device; the train and eval
steps are called under their run's mesh (`train._UnderMesh`).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib
from jax.sharding import PartitionSpec as P

from valle_jax import sharding

Array = jax.Array
BLOCK = 128   # the kernel's query and key block (BlockSizes.get_default); sequences pad to it
BATCH_AXES = sharding.LOGICAL_RULES["batch"]    # the mesh axes a batch is split over
HEADS_AXIS = sharding.LOGICAL_RULES["heads"]    # and the heads


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
  mesh = jax.sharding.get_abstract_mesh()
  batch_axes, heads_axis = _mesh_axes(mesh, b, n)
  kernel = _kernel(padded, mask.prefix, n // _size(mesh, heads_axis), interpret)
  def one_example(q, k, v, segment):
    return kernel(q, k, v, segment_ids=splash_lib.SegmentIds(q=segment, kv=segment))
  attend = jax.vmap(one_example)
  if batch_axes or heads_axis:  # XLA cannot partition the kernel: one call per device
    spec = P(batch_axes, heads_axis)                                # [B, N, Tp, H]
    attend = jax.shard_map(attend, in_specs=(spec, spec, spec, P(batch_axes)), out_specs=spec,
                           check_vma=False)
  out = attend(heads_first(q * jnp.asarray(scale, q.dtype)), heads_first(k), heads_first(v),
               segment)                                             # [B, N, Tp, H]
  return out.transpose(0, 2, 1, 3)[:, :t]


def _size(mesh, axes) -> int:
  names = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[name] for name in names)


def _mesh_axes(mesh, batch: int, heads: int):
  """The ambient mesh's axes that split the batch and the heads (`sharding.LOGICAL_RULES`:
  "batch" -> data x fsdp, "heads" -> tensor), each None when the mesh has none of them of
  size > 1 or they do not divide the dimension (then it is replicated)."""
  batch_axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1) or None
  heads_axis = HEADS_AXIS if mesh.shape.get(HEADS_AXIS, 1) > 1 else None
  if batch % _size(mesh, batch_axes):
    batch_axes = None
  if heads % _size(mesh, heads_axis):
    heads_axis = None
  return batch_axes, heads_axis


def backend_problems(attention_name: str) -> list[str]:
  """Why `attention_name` cannot train here (one line each; none for "xla" and "cudnn")."""
  if attention_name != "splash":
    return []
  if jax.default_backend() != "tpu":
    return [f"model.attention = 'splash' is a TPU kernel and this JAX backend is "
            f"{jax.default_backend()!r}; use 'xla' (or 'cudnn' on an NVIDIA GPU)"]
  return []
