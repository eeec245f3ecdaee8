"""Serving exports: the greedy and beam decoders as serialized StableHLO
(`jax.export`), run without the model's Python code.

`export_serving(translator, out)` writes a folder:

  serving.json        the format, the decoding settings compiled in (beam
                      size, alpha, max_len_ratio, max_len_offset), the source
                      widths and the module files of each, the special ids,
                      the tokenizers (their files, base64), the parameters'
                      names and dtypes, the platforms, the versions that wrote it
  params.npz          the parameters, one array per "/"-joined name
  greedy_s{W}.jaxexport, beam{K}_s{W}.jaxexport
                      one module per source width W: inputs (params, src
                      `[b, W]` int32, src_lengths `[b]` int32), the batch `b`
                      symbolic (any size runs without re-exporting)
  MANIFEST.json       the sha256 and size of every other file

`ServedTranslator.load(folder)` checks the manifest and translates with those
modules. It imports jax, numpy and `flax_attn.tokenizers` only: none of the
model's code (modules, decoders, Flax), so a folder written by one version of
flax_attn runs with the loader of another, as long as jax can deserialize it
(`jax.export` keeps old serializations readable for months; see its docs).

What the modules compute is `Translator.translate` with the same settings: the
same decoders (`greedy_decode`, `beam_search`), traced once per width. Each
row's output is cut at its own length limit, `ceil(max_len_ratio * n +
max_len_offset)` for n source tokens, as `Translator` does. (The modules are
compiled for their widths, `Translator` for each batch's; the outputs agree
up to floating-point rounding, exactly in the tests. A greedy batch stops when
every row has ended, else at its width's length limit, so a row that never
ends costs more steps than in `Translator`, not other outputs.)
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax_attn import manifest, paths
from flax_attn import tokenizers as tok_lib
from flax_attn.text_input import check_sentences

FORMAT = "flax_attn-serving"
FORMAT_VERSION = 1
META_FILE = "serving.json"
PARAMS_FILE = "params.npz"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")

logger = logging.getLogger(__name__)  # "flax_attn.serving"


class ServingError(ValueError):
  """A serving export that cannot be written or run (one-line message)."""


def default_widths(max_src_len: int) -> tuple[int, ...]:
  """Source widths 8, 16, 32, ... up to the first that holds `max_src_len`."""
  widths = [8]
  while widths[-1] < max_src_len:
    widths.append(widths[-1] * 2)
  return tuple(widths)


def length_limit(src_len: int, ratio: float, offset: float) -> int:
  """At most this many output tokens for a source of `src_len` ids."""
  return max(1, math.ceil(ratio * src_len + offset))


def _flatten(params) -> dict[str, np.ndarray]:
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    out["/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
  return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  out: dict = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out


def export_serving(translator, out: str | os.PathLike, src_widths: Sequence[int] | None = None,
                   beam_size: int | None = None,
                   platforms: Sequence[str] = DEFAULT_PLATFORMS) -> dict:
  """Writes the serving export of `translator` (a `flax_attn.Translator`) to
  the new folder `out`; returns the record written to `serving.json`.

  Args:
    src_widths: the source widths to compile for, increasing (default
      `default_widths(translator.max_src_len)`); a sentence runs in the
      smallest that holds it; `translate` truncates longer sentences to the
      last (as `Translator` does to `max_src_len`), `translate_ids` refuses them.
    beam_size: the beam module's size (default: the translator's decoding
      settings); 1 writes greedy modules only. alpha and the length limits
      always come from `translator.decode`.
    platforms: what the modules are lowered for (`jax.export` lowers for a
      platform without needing its hardware).
  """
  from flax_attn.beam import beam_search
  from flax_attn.greedy import greedy_decode

  d = translator.decode.replace(beam_size=beam_size)
  widths = (tuple(int(w) if isinstance(w, numbers.Integral) and not isinstance(w, bool) else w
                  for w in src_widths)
            if src_widths is not None else default_widths(translator.max_src_len))
  if (not widths or any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1
                        for w in widths) or list(widths) != sorted(set(widths))):
    raise ServingError(f"src_widths must be increasing positive integers, got {widths!r}")
  out = paths.as_path(out)
  if out.exists():
    raise ServingError(f"{out} exists already; serving exports are written to a new folder")
  config, params = translator.config, translator.params
  flat = _flatten(params)

  def greedy(params, src, src_lengths, *, max_len):
    res = greedy_decode(config, params, src, src_lengths, max_len)
    return res.tokens, res.lengths

  def beam(params, src, src_lengths, *, max_len):
    res = beam_search(config, params, src, src_lengths, beam_size=d.beam_size, alpha=d.alpha,
                      max_len_ratio=d.max_len_ratio, max_len_offset=d.max_len_offset,
                      max_len=max_len, n_best=1)
    return res.tokens[:, 0], res.lengths[:, 0]

  (b,) = jax.export.symbolic_shape("b")
  params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  kinds = {"greedy": greedy, **({f"beam{d.beam_size}": beam} if d.beam_size > 1 else {})}
  modules, buckets = {}, []
  for w in widths:
    max_len = -(-length_limit(w, d.max_len_ratio, d.max_len_offset) // 8) * 8
    bucket = {"src_width": w, "max_len": max_len}
    for kind, fn in kinds.items():
      name = f"{kind}_s{w}.jaxexport"
      exported = jax.export.export(jax.jit(lambda p, s, n, fn=fn, m=max_len: fn(p, s, n, max_len=m)),
                                   platforms=tuple(platforms))(
          params_spec, jax.ShapeDtypeStruct((b, w), jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32))
      modules[name] = exported.serialize()
      bucket[kind.rstrip("0123456789")] = name
    buckets.append(bucket)

  from flax_attn import export as export_lib  # versions(); imported here, not by the loader
  record = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "step": translator.step,
      "decode": {"beam_size": d.beam_size, "alpha": d.alpha, "max_len_ratio": d.max_len_ratio,
                 "max_len_offset": d.max_len_offset},
      "buckets": buckets, "platforms": list(platforms),
      # Longer inputs are truncated to the widest module's width.
      "eos_id": config.eos_id, "pad_id": config.pad_id,
      "max_src_len": min(translator.max_src_len, int(widths[-1])),
      "params": {k: str(v.dtype) for k, v in flat.items()},
      "tokenizers": {"src": tok_lib.to_json(translator.src_tokenizer),
                     "trg": tok_lib.to_json(translator.trg_tokenizer)},
      "versions": export_lib.versions(),
  }
  out.mkdir(parents=True)
  with (out / PARAMS_FILE).open("wb") as f:
    # npz has no bfloat16: such arrays are stored as their uint16 bits.
    np.savez(f, **{k: v.view(np.uint16) if v.dtype == jnp.bfloat16 else v for k, v in flat.items()})
  for name, data in modules.items():
    (out / name).write_bytes(bytes(data))
  paths.write_text(out / META_FILE, json.dumps(record, indent=1, sort_keys=True))
  manifest.write(out)
  return record


class ServedTranslator:
  """Translates with a serving export (see the module docstring).

  Attributes: meta (the `serving.json` record), src_tokenizer,
  trg_tokenizer, beam_size (of the beam modules; 1 when there are none),
  widths (the source widths compiled for), max_src_len (longer inputs are
  truncated, with the count in `truncated` after each call).
  """

  def __init__(self, path: str | os.PathLike, verify: bool = True):
    path = paths.as_path(path)
    meta = manifest.read_record(path, META_FILE, FORMAT, FORMAT_VERSION, "serving export",
                                ServingError)
    backend = jax.export.default_export_platform()  # "cuda", not "gpu"
    if backend not in meta["platforms"]:
      raise ServingError(f"{path} was lowered for {meta['platforms']}, not for this machine's "
                         f"{backend!r}: export it again with platforms including {backend!r}")
    if verify:
      manifest.verify(path, ServingError)
    self.path, self.meta = path, meta
    self.src_tokenizer = tok_lib.from_json(meta["tokenizers"]["src"])
    self.trg_tokenizer = tok_lib.from_json(meta["tokenizers"]["trg"])
    self.beam_size = int(meta["decode"]["beam_size"])
    self.max_src_len = int(meta["max_src_len"])
    self.widths = tuple(b["src_width"] for b in meta["buckets"])
    self.truncated = 0
    with (path / PARAMS_FILE).open("rb") as f, np.load(f) as npz:
      flat = {k: npz[k].view(jnp.dtype(meta["params"][k])) for k in meta["params"]}
    self.params = jax.device_put(_unflatten(flat))
    self._calls: dict[str, Any] = {}

  @classmethod
  def load(cls, path: str | os.PathLike, verify: bool = True) -> "ServedTranslator":
    """The same as `ServedTranslator(path, verify)`."""
    return cls(path, verify)

  def _call(self, name: str):
    if name not in self._calls:
      data = (self.path / name).read_bytes()
      try:
        exported = jax.export.deserialize(bytearray(data))
      except Exception as e:  # noqa: BLE001 - any failure here is "this jax cannot read it"
        raise ServingError(f"{self.path / name} cannot be deserialized by jax "
                           f"{jax.__version__}: {type(e).__name__}: {e}") from None
      self._calls[name] = jax.jit(exported.call)  # compiled once per batch size
    return self._calls[name]

  def translate_ids(self, src_ids: Sequence[np.ndarray], beam: bool | None = None,
                    batch_size: int = 128) -> list[list[int]]:
    """Token ids (EOS included in the input) -> output ids (no EOS), in input
    order. `beam=None` uses the beam modules when the export has them (its
    decoding settings), else greedy."""
    beam = self.beam_size > 1 if beam is None else beam
    if beam and self.beam_size == 1:
      raise ServingError(f"{self.path} holds greedy modules only (exported with beam_size=1)")
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ServingError(f"batch_size must be a positive integer, got {batch_size!r}")
    d, eos, pad = self.meta["decode"], self.meta["eos_id"], self.meta["pad_id"]
    lengths = np.array([len(x) for x in src_ids], np.int64)
    if len(src_ids) and (lengths.min() < 1 or lengths.max() > self.widths[-1]):
      bad = int(np.argmax((lengths < 1) | (lengths > self.widths[-1])))
      raise ServingError(f"input {bad} has {lengths[bad]} ids; this export takes 1 to "
                         f"{self.widths[-1]} (EOS included)")
    out: list = [None] * len(src_ids)
    order = np.argsort(lengths, kind="stable")
    rows_max = max(1, min(batch_size, 1 << max(len(src_ids) - 1, 0).bit_length()))
    for i in range(0, len(order), rows_max):
      ix = order[i:i + rows_max]
      bucket = next(b for b in self.meta["buckets"] if b["src_width"] >= lengths[ix].max())
      src = np.full((rows_max, bucket["src_width"]), pad, np.int32)
      src[:, 0] = eos  # padding rows: one EOS
      src_len = np.ones((rows_max,), np.int32)
      for r, k in enumerate(ix):
        src[r, :lengths[k]] = src_ids[k]
        src_len[r] = lengths[k]
      tokens, out_len = self._call(bucket["beam" if beam else "greedy"])(self.params, src, src_len)
      tokens, out_len = np.asarray(tokens), np.asarray(out_len)
      for r, k in enumerate(ix):
        own = length_limit(int(lengths[k]), d["max_len_ratio"], d["max_len_offset"])
        row = tokens[r, :min(int(out_len[r]), own)].tolist()
        out[k] = row[:-1] if row and row[-1] == eos else row
    return out

  def translate(self, sentences: Sequence[str], beam: bool | None = None,
                batch_size: int = 128) -> list[str]:
    """Strings in, strings out, in input order ("" and blank give "")."""
    sentences = check_sentences(sentences)
    keep = [i for i, s in enumerate(sentences) if s.strip()]
    src, self.truncated = [], 0
    for i in keep:
      ids = self.src_tokenizer.encode(sentences[i])
      if len(ids) > self.max_src_len - 1:
        ids, self.truncated = ids[:self.max_src_len - 1], self.truncated + 1
      src.append(np.asarray(ids + [tok_lib.EOS_ID], np.int32))
    if self.truncated:
      logger.warning("%d input(s) longer than %d tokens were truncated", self.truncated,
                     self.max_src_len - 1)
    result = [""] * len(sentences)
    for i, ids in zip(keep, self.translate_ids(src, beam, batch_size)):
      result[i] = self.trg_tokenizer.decode(ids)
    return result
