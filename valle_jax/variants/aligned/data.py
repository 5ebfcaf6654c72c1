"""The aligned variant's data: forced alignments and the batches that carry them.

`valle-jax align` (align.py) writes `<dataset>/alignments.npz`; `load_alignments` maps a
split's arrays from it without reading them (np.savez stores them uncompressed), so a
LibriLight-size file (~65 GB) costs each loader only the pages of the records it reads. `AlignedBatchLoader` adds to VALL-E's batches (valle_jax/data.py): AR batches carry
`phoneme_of_frame` and `target_start`, the pointer's inputs; NAR batches learn codebook 1 too
(stages [0, Q), `data.nar_stage_weights` one weight per codebook 1..Q) and carry
`frame_phonemes`, each target frame's phoneme.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import zipfile
from typing import Any, Mapping, Sequence

import numpy as np

from valle_jax import data
from valle_jax.errors import UserError

ALIGNMENTS_FILE = "alignments.npz"


@dataclasses.dataclass(frozen=True)
class Alignments:
  """Per record, the phoneme index of each frame (int32 [T]), stored end to end."""
  frames: np.ndarray       # int32 [sum of T]
  offsets: np.ndarray      # int64 [N + 1]

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, index: int) -> np.ndarray:
    return self.frames[self.offsets[index]:self.offsets[index + 1]]

  def __reduce__(self):
    """Mapped arrays pickle (to Grain's worker processes) as where they are mapped from,
    not as their contents."""
    if isinstance(self.frames, np.memmap) and isinstance(self.offsets, np.memmap):
      return (_map_alignments, (self.frames.filename, _mapping(self.frames),
                                _mapping(self.offsets)))
    return (Alignments, (np.asarray(self.frames), np.asarray(self.offsets)))


def _mapping(array: np.memmap) -> tuple[int, str, tuple[int, ...]]:
  return array.offset, array.dtype.str, array.shape


def _map_alignments(path: str, frames, offsets) -> Alignments:
  return Alignments(*(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
                      for offset, dtype, shape in (frames, offsets)))


def load_alignments(dataset: data.Dataset, split: str) -> Alignments:
  """The phoneme-to-frame alignments of a split (written by `valle-jax align`)."""
  path = os.path.join(dataset.path, ALIGNMENTS_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{dataset.path} has no alignments ({ALIGNMENTS_FILE}), which the "
                    "aligned variant trains on; run `valle-jax align "
                    f"--dataset={dataset.path}` first.")
  with zipfile.ZipFile(path) as z:
    if f"{split}/offsets.npy" not in z.namelist():
      raise UserError(f"{path} has no alignments of split {split!r}; run `valle-jax align "
                      f"--dataset={dataset.path}` again.")
  alignments = Alignments(_mapped(path, f"{split}/frames"), _mapped(path, f"{split}/offsets"))
  if len(alignments) != len(dataset.split(split)):
    raise UserError(f"{path} aligns {len(alignments)} records of split {split!r}, the "
                    f"dataset has {len(dataset.split(split))}; run `valle-jax align` again.")
  return alignments


def _mapped(path: str, name: str) -> np.ndarray:
  """Array `name` of the .npz at `path`, memory-mapped (read whole if it is compressed)."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(name + ".npy")
  if info.compress_type != zipfile.ZIP_STORED:
    with np.load(path) as z:
      return z[name]
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    header = f.read(30)                    # the member's local header, then its name and extra
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read_header(f)
    offset = f.tell()
  if fortran_order and len(shape) > 1:
    raise UserError(f"{path}: {name} is not in the layout `valle-jax align` writes; run it again.")
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def even_split(num_frames: int, num_phonemes: int) -> np.ndarray:
  """int32 [T]: frame t -> phoneme floor((t + 1/2) L / T), the alignment of a steady rate."""
  t = (np.arange(num_frames) + 0.5) * num_phonemes / max(num_frames, 1)
  return np.minimum(t.astype(np.int32), max(num_phonemes - 1, 0))


def utterance_codebooks(description: Mapping[str, Any]) -> tuple[int, ...]:
  """The codebooks (0-based) a codec codes once per utterance, the same code at every frame
  (its `describe()["utterance_codebooks"]`; none for EnCodec): the voice of the offline
  codec's `voice_codebooks`. The variant's synthesis copies them from the prompt instead of
  having the NAR predict them, as the voice is the prompt's; alignment does not observe them."""
  return tuple(int(q) for q in description.get("utterance_codebooks", ()))


class AlignedBatchLoader(data.BatchLoader):
  """VALL-E's `BatchLoader` with the alignments' inputs (see the module docstring)."""
  first_stage = 0

  def __init__(self, source, plan: data.BatchPlan, data_cfg, *, alignments: Alignments,
               **kwargs):
    super().__init__(source, plan, data_cfg, **kwargs)
    if plan.cropped.any():
      raise ValueError(f"the plan crops {int(plan.cropped.sum())} examples, which their "
                       "alignments do not follow; make it with crop_long=False.")
    self.alignments = alignments

  def _record(self, partner: int, index: int, batch_index: int) -> dict[str, Any]:
    """VALL-E's record with `phoneme_of_frame` and `target_start`: the utterance's
    alignment, after (for a pair) the partner's frames split evenly over the phonemes before
    the utterance's (`prompt_phonemes`: the partner's transcript as synthesis joins it), as a
    prompt is at inference, where the prompt's alignment is not known (the AR's pointer); and
    `frame_phonemes`, the alignment of every frame, the partner's included and clipped to
    those phonemes (the NAR's). A padding row's are empty."""
    record = super()._record(partner, index, batch_index)
    if index < 0:
      empty = np.zeros((0,), np.int32)
      return {**record, "phoneme_of_frame": empty, "target_start": 0, "frame_phonemes": empty}
    alignment = np.asarray(self.alignments[index], np.int32)
    if partner < 0:
      return {**record, "phoneme_of_frame": alignment, "target_start": 0,
              "frame_phonemes": alignment}
    num_frames, heard = len(self.source[partner]["codes"]), record["prompt_phonemes"]
    return {**record,
            "phoneme_of_frame": np.concatenate([even_split(num_frames, heard),
                                                alignment + heard]),
            "target_start": num_frames,
            "frame_phonemes": np.concatenate([
                np.minimum(np.asarray(self.alignments[partner], np.int32), heard - 1),
                alignment + heard])}

  def _ar(self, records, bucket: data.Bucket) -> dict[str, np.ndarray]:
    return {**super()._ar(records, bucket),
            "phoneme_of_frame": pad_frames([r["phoneme_of_frame"] for r in records],
                                           bucket.frames),
            "target_start": np.array([r["target_start"] for r in records], np.int32)}

  def _nar_target_inputs(self, records, target_starts: list[int], bucket: data.Bucket
                         ) -> dict[str, np.ndarray]:
    return {"frame_phonemes": pad_frames(
        [r["frame_phonemes"][start:] for r, start in zip(records, target_starts)],
        bucket.frames)}


def batch_loader(cfg, dataset: data.Dataset, split: str, source, plan, **kwargs
                 ) -> AlignedBatchLoader:
  """The recipe's loader: `split`'s alignments from `dataset`."""
  return AlignedBatchLoader(source, plan, cfg.data, alignments=load_alignments(dataset, split),
                            **kwargs)


def pad_frames(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
  """Per-frame int rows [T_i] -> int32 [B, width], 0-padded (cut to width)."""
  out = np.zeros((len(rows), width), np.int32)
  for row, values in enumerate(rows):
    out[row, :len(values)] = values[:width]
  return out
