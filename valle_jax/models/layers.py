"""Transformer building blocks shared by the AR and NAR models.

Conventions
- Parameters are float32 `nnx.Param`s carrying `logical_axes` metadata (names from
  `valle_jax.sharding.LOGICAL_RULES`); they are cast to the compute dtype where used.
  Matmul weights are named `*kernel` (or `*_proj`): those names, and only those, get
  weight decay (`train.weight_decay_mask`).
- Attention goes through `jax.nn.dot_product_attention` (`attention`: "xla" or "cudnn");
  its logits (QK^T accumulated in float32) and softmax, layer-norm statistics and output
  logits are float32 whatever the compute dtype.
- Dropout is explicit: pass `dropout_rng=None` for deterministic (eval) behaviour, or a
  PRNG key for training. Nothing stores RNG state, so train steps stay pure functions.
- Shapes: B batch, T query length, S key length (cache slots), D width, N heads,
  H head dim, F mlp dim.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from valle_jax.models import splash

Array = jax.Array
# `jax.nn.dot_product_attention`'s implementations: XLA's (any device) and cuDNN's fused
# flash attention (NVIDIA GPUs, bfloat16 or float16 inputs); and Pallas's TPU splash kernel
# (models/splash.py), for the masks the models build as `splash.Mask`.
ATTENTION = ("xla", "cudnn", "splash")

_dense_init = jax.nn.initializers.lecun_normal()
_zeros = jax.nn.initializers.zeros
_ones = jax.nn.initializers.ones


def embed_init(width: int):
  """Token embeddings: entries N(0, 1/D), read by `embed` times sqrt(D).

  The Transformer's convention: a looked-up embedding has unit RMS, on par with the
  sinusoidal positions added to it (at 0.02 it was 1/35 of them and tokens took hundreds of
  steps to be heard over their positions), while a tied output layer that reads the table
  unscaled gives unit-variance logits at initialisation.
  """
  return jax.nn.initializers.normal(stddev=width ** -0.5)


def embed(table: Array, ids: Array) -> Array:
  """Rows `ids` of an embedding table [..., V, D], times sqrt(D) (see `embed_init`)."""
  return table[ids] * table.shape[-1] ** 0.5


def make_param(rngs: nnx.Rngs, init, shape: tuple[int, ...],
               logical_axes: tuple[str | None, ...]) -> nnx.Param:
  """A float32 parameter annotated with logical axis names (one per dimension)."""
  assert len(shape) == len(logical_axes), (shape, logical_axes)
  return nnx.Param(init(rngs.params(), shape, jnp.float32), logical_axes=logical_axes)


def sinusoidal_positions(positions: Array, dim: int) -> Array:
  """Sinusoidal position encodings. positions [...] int -> [..., dim] float32: the sines
  of frequencies 10000^(-2i / dim), i < dim / 2, then their cosines.

  The frequencies are rounded as PyTorch's usual table computes them (a float32 exponent,
  then exp), so that a converted PyTorch model sees the same positions to the last bit in
  almost every entry (`valle_jax.convert.lifeiteng`).
  """
  half = dim // 2
  exponents = np.arange(0, 2 * half, 2, dtype=np.float32) * np.float32(-math.log(10_000.0) / dim)
  freqs = jnp.asarray(np.exp(exponents.astype(np.float64)).astype(np.float32))   # [dim/2]
  angles = positions.astype(jnp.float32)[..., None] * freqs
  enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  if dim % 2:
    enc = jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, 1)])
  return enc


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
  """Inverted dropout; identity when `rng` is None or `rate` is 0."""
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def layer_norm(x: Array, eps: float = 1e-5) -> Array:
  """LayerNorm without affine parameters, statistics in float32; returns x's dtype."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class Norm(nnx.Module):
  """LayerNorm with a learned affine map, or AdaLN when `num_conditions` > 0.

  AdaLN (VALL-E's NAR stage injection): `AdaLN(h, j) = a_j * LayerNorm(h) + b_j`, with one
  (a_j, b_j) pair per condition j, chosen per example by `condition` [B].
  """

  def __init__(self, width: int, *, num_conditions: int = 0, rngs: nnx.Rngs):
    self.adaptive = num_conditions > 0
    if self.adaptive:
      self.scale = make_param(rngs, _ones, (num_conditions, width), (None, "embed"))
      self.bias = make_param(rngs, _zeros, (num_conditions, width), (None, "embed"))
    else:
      self.scale = make_param(rngs, _ones, (width,), ("embed",))
      self.bias = make_param(rngs, _zeros, (width,), ("embed",))

  def __call__(self, x: Array, condition: Array | None = None) -> Array:
    y = layer_norm(x).astype(jnp.float32)                     # [B, T, D]
    if self.adaptive:
      if condition is None:
        raise ValueError("AdaLN needs a condition (the NAR stage) per example.")
      scale = self.scale[...][condition][:, None, :]         # [B, 1, D]
      bias = self.bias[...][condition][:, None, :]
    else:
      scale, bias = self.scale[...], self.bias[...]
    return (y * scale + bias).astype(x.dtype)


def check_attention(name: str) -> str:
  """`name` if it is one of ATTENTION, else a clear error."""
  if name not in ATTENTION:
    raise ValueError(f"attention must be one of {list(ATTENTION)}, got {name!r}.")
  return name


class Attention(nnx.Module):
  """Multi-head attention with an optional key/value cache.

  Without a cache, keys and values come from `x` itself and `mask` is [B, 1, T, T].
  With a cache ({"k", "v"}: [num_layers, B, N, S, H], shared by all layers), this layer's
  new keys/values are written into row `layer` at slots [write_slot, write_slot + T), the
  same for every example (one `dynamic_update_slice`), and the queries attend over all S
  slots with `mask` [B, 1, T, S]; the updated cache is returned. Writing into the stacked
  cache in place keeps decoding free of copies, and heads before slots make each head's
  keys and values one contiguous [S, H] matrix, which the attention's batched matmuls read
  as they are (with [B, S, N, H] XLA transposed every layer's cache at every decoding
  step: 215-229 -> 132-144 ms a paper-size step at batch 8 on 2 CPU cores).

  The attention itself is `jax.nn.dot_product_attention` with `implementation` ("xla" or
  "cudnn"). XLA's accumulates QK^T in float32 and takes the softmax in float32 for bfloat16
  inputs too, then casts the probabilities to the compute dtype for the product with V;
  cuDNN's flash attention keeps its logits and softmax statistics in float32 and never
  stores the [B, N, T, S] probabilities (it takes bfloat16 inputs only).
  """

  def __init__(self, width: int, num_heads: int, *, implementation: str = "xla",
               rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}.")
    head_dim = width // num_heads
    qkv_shape = (width, num_heads, head_dim)
    qkv_axes = ("embed", "heads", "kv")
    self.q_kernel = make_param(rngs, _dense_init, qkv_shape, qkv_axes)
    self.k_kernel = make_param(rngs, _dense_init, qkv_shape, qkv_axes)
    self.v_kernel = make_param(rngs, _dense_init, qkv_shape, qkv_axes)
    self.q_bias = make_param(rngs, _zeros, (num_heads, head_dim), ("heads", "kv"))
    self.k_bias = make_param(rngs, _zeros, (num_heads, head_dim), ("heads", "kv"))
    self.v_bias = make_param(rngs, _zeros, (num_heads, head_dim), ("heads", "kv"))
    out_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1))
    self.out_kernel = make_param(rngs, out_init, (num_heads, head_dim, width),
                                 ("heads", "kv", "embed"))
    self.out_bias = make_param(rngs, _zeros, (width,), ("embed",))
    self.head_dim = head_dim
    self.implementation = check_attention(implementation)

  def __call__(self, x: Array, mask: Array, *, cache: dict[str, Array] | None = None,
               layer: int = 0, write_slot: Array | int = 0
               ) -> tuple[Array, dict[str, Array] | None]:
    dtype = x.dtype
    def project(kernel, bias):
      return jnp.einsum("btd,dnh->btnh", x, kernel[...].astype(dtype)) + bias[...].astype(dtype)
    q = project(self.q_kernel, self.q_bias)                   # [B, T, N, H]
    k = project(self.k_kernel, self.k_bias)
    v = project(self.v_kernel, self.v_bias)
    if cache is not None:
      start = (layer, 0, 0, write_slot, 0)
      cache = {name: jax.lax.dynamic_update_slice(
                   cache[name], jnp.swapaxes(new, 1, 2)[None].astype(cache[name].dtype), start)
               for name, new in (("k", k), ("v", v))}                # [L, B, N, S, H]
      k = jnp.swapaxes(cache["k"][layer], 1, 2).astype(dtype)   # [B, S, N, H]
      v = jnp.swapaxes(cache["v"][layer], 1, 2).astype(dtype)
    if isinstance(mask, splash.Mask):  # "splash" without a cache (models/splash.py)
      out = splash.attention(q, k, v, mask, scale=self.head_dim ** -0.5)    # [B, T, N, H]
    else:  # "splash" passes dense masks (the KV-cache paths) to XLA's
      implementation = "xla" if self.implementation == "splash" else self.implementation
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.head_dim ** -0.5,
                                         implementation=implementation)  # [B, T, N, H]
    out = jnp.einsum("btnh,nhd->btd", out, self.out_kernel[...].astype(dtype))
    return out + self.out_bias[...].astype(dtype), cache


ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu}   # gelu: tanh approximation


def check_activation(name: str) -> str:
  """`name` if it is one of ACTIVATIONS, else a clear error."""
  if name not in ACTIVATIONS:
    raise ValueError(f"mlp_activation must be one of {sorted(ACTIVATIONS)}, got {name!r}.")
  return name


class MLP(nnx.Module):
  """Position-wise feed-forward network: D -> F (`activation`) -> D."""

  def __init__(self, width: int, mlp_dim: int, *, activation: str = "gelu", rngs: nnx.Rngs):
    self.activation = check_activation(activation)
    self.in_kernel = make_param(rngs, _dense_init, (width, mlp_dim), ("embed", "mlp"))
    self.in_bias = make_param(rngs, _zeros, (mlp_dim,), ("mlp",))
    self.out_kernel = make_param(rngs, _dense_init, (mlp_dim, width), ("mlp", "embed"))
    self.out_bias = make_param(rngs, _zeros, (width,), ("embed",))

  def __call__(self, x: Array) -> Array:
    dtype = x.dtype
    h = x @ self.in_kernel[...].astype(dtype) + self.in_bias[...].astype(dtype)
    h = ACTIVATIONS[self.activation](h)
    return h @ self.out_kernel[...].astype(dtype) + self.out_bias[...].astype(dtype)


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: x + Attn(Norm(x)); then + MLP(Norm(.))."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, dropout_rate: float, *,
               num_conditions: int = 0, activation: str = "gelu", attention: str = "xla",
               rngs: nnx.Rngs):
    self.attn_norm = Norm(width, num_conditions=num_conditions, rngs=rngs)
    self.attn = Attention(width, num_heads, implementation=attention, rngs=rngs)
    self.mlp_norm = Norm(width, num_conditions=num_conditions, rngs=rngs)
    self.mlp = MLP(width, mlp_dim, activation=activation, rngs=rngs)
    self.dropout_rate = dropout_rate

  def __call__(self, x: Array, mask: Array, *, condition: Array | None = None,
               cache: dict[str, Array] | None = None, layer: int = 0,
               write_slot: Array | int = 0,
               dropout_rng: Array | None = None) -> tuple[Array, Any]:
    rng_attn = rng_mlp = None
    if dropout_rng is not None:
      rng_attn, rng_mlp = jax.random.split(dropout_rng)
    h, cache = self.attn(self.attn_norm(x, condition), mask, cache=cache, layer=layer,
                         write_slot=write_slot)
    x = x + dropout(h, self.dropout_rate, rng_attn)
    h = self.mlp(self.mlp_norm(x, condition))
    x = x + dropout(h, self.dropout_rate, rng_mlp)
    return x, cache


# Activation rematerialisation per block (`remat`): "none" keeps every intermediate for the
# backward pass; "full" keeps only each block's inputs and recomputes the block in the
# backward pass; "dots_saveable" keeps the matmul outputs and recomputes the rest
# (elementwise ops, norms, softmax).
REMAT = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
         "dots_saveable": jax.checkpoint_policies.dots_saveable}


def check_remat(name: str) -> str:
  """`name` if it is one of REMAT, else a clear error."""
  if name not in REMAT:
    raise ValueError(f"remat must be one of {list(REMAT)}, got {name!r}.")
  return name


def stack_blocks(blocks: list[Block]) -> Block:
  """One `Block` whose parameters hold `blocks`' parameters stacked on a leading axis
  (logical axis "layers"): the form `Transformer` scans over."""
  splits = [nnx.split(block) for block in blocks]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in splits))
  for _, variable in nnx.to_flat_state(stacked):
    axes = variable.get_metadata()["logical_axes"]
    variable.set_metadata("logical_axes", ("layers", *axes))
  return nnx.merge(splits[0][0], stacked)


class Transformer(nnx.Module):
  """A stack of pre-LN blocks followed by a final norm.

  The blocks' parameters are stacked on a leading layer axis (`blocks.attn.q_kernel` is
  [num_layers, D, N, H]; logical axis "layers") and the forward is one `lax.scan` over
  them, so a shape compiles one block, not `num_layers`. A decoding step (one query per
  sequence, with a cache) unrolls the scan instead: its block is small, and a loop over
  layers would cost a loop iteration's round trip per layer on a GPU.

  `cache`, when given, is {"k", "v"}: [num_layers, B, N, S, H] (the layer axis leads, as in
  the blocks' parameters); the updated cache is returned.
  `remat` (a key of REMAT) rematerialises each block in the backward pass with that policy
  (`jax.checkpoint` around the scanned block); the parameters do not change.
  """

  def __init__(self, *, num_layers: int, width: int, num_heads: int, mlp_dim: int,
               dropout_rate: float, num_conditions: int = 0, activation: str = "gelu",
               attention: str = "xla", remat: str = "none", rngs: nnx.Rngs):
    self.num_layers = num_layers
    self.blocks = stack_blocks([
        Block(width, num_heads, mlp_dim, dropout_rate, num_conditions=num_conditions,
              activation=activation, attention=attention, rngs=rngs)
        for _ in range(num_layers)])
    self.final_norm = Norm(width, num_conditions=num_conditions, rngs=rngs)
    self.remat = check_remat(remat)

  def __call__(self, x: Array, mask: Array, *, condition: Array | None = None,
               cache: dict[str, Array] | None = None, write_slot: Array | int = 0,
               dropout_rng: Array | None = None) -> tuple[Array, Any]:
    graphdef, stacked = nnx.split(self.blocks)

    def run_block(carry, layer_and_params):
      x, cache = carry
      layer, params = layer_and_params
      layer_rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, layer)
      x, cache = nnx.merge(graphdef, params)(
          x, mask, condition=condition, cache=cache, layer=layer, write_slot=write_slot,
          dropout_rng=layer_rng)
      return (x, cache), None

    if self.remat != "none":
      run_block = jax.checkpoint(run_block, policy=REMAT[self.remat], prevent_cse=False)
    decoding = cache is not None and x.shape[1] == 1
    (x, cache), _ = jax.lax.scan(
        run_block, (x, cache), (jnp.arange(self.num_layers), stacked),
        unroll=self.num_layers if decoding else 1)
    return self.final_norm(x, condition), cache


def compute_dtype(name: str) -> jnp.dtype:
  """'float32' | 'bfloat16' -> dtype, with a clear error for anything else."""
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', got {name!r}.")
  return jnp.dtype(name)
