"""Tokenizers with fixed special ids, shared by every task.

Special ids follow the PyTorch seq2seq tutorial's torchtext order::

    UNK_ID = 0  "<unk>"
    PAD_ID = 1  "<pad>"
    BOS_ID = 2  "<sos>"
    EOS_ID = 3  "<eos>"

All tokenizers share one interface:

* ``encode(text: str) -> list[int]``: ids, no BOS/EOS added; unknown tokens map
  to ``UNK_ID``.
* ``decode(ids: Iterable[int]) -> str``: skips PAD/BOS/EOS (it does not stop at
  EOS; truncate first if you need that), keeps ``<unk>``.
* ``tokens(text) -> list[str]``, ``id_to_token(i) -> str``, ``vocab_size``.
* ``save(directory)`` writes ``tokenizer.json`` (plus ``spm.model`` for
  SentencePiece); ``Class.load(directory)`` or :func:`load_tokenizer` (which
  dispatches on the ``kind`` field) read it back.

Kinds: ``WordTokenizer`` (the tutorial's lower-cased words: Moses tokens and
detokenisation for a language, or a plain regex split), ``CharTokenizer`` (one token per character, spaces included),
``WhitespaceTokenizer`` (whitespace-split symbols, e.g. phonemes) and
``SentencePieceTokenizer`` (BPE or unigram, trained in memory).
"""

from __future__ import annotations

import base64
import collections
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import sacremoses
import sentencepiece as spm

UNK_ID, PAD_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
UNK_TOKEN, PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<unk>", "<pad>", "<sos>", "<eos>"
SPECIAL_TOKENS = (UNK_TOKEN, PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
_SKIP_ON_DECODE = frozenset((PAD_ID, BOS_ID, EOS_ID))

CONFIG_FILE = "tokenizer.json"
SPM_MODEL_FILE = "spm.model"

_WORD_RE = re.compile(r"\w+|[^\w\s]")


def _check_text(text) -> str:
  if not isinstance(text, str):
    raise TypeError(f"expected text of type str, got {type(text).__name__}")
  return text


def _check_texts(texts) -> list[str]:
  if isinstance(texts, (str, bytes)):
    raise TypeError("expected an iterable of str, got a single string")
  texts = list(texts)
  for t in texts:
    _check_text(t)
  return texts


def _decode_ids(ids: Iterable[int]) -> list[int]:
  """Plain ints from a list / numpy array, with PAD/BOS/EOS removed."""
  return [int(i) for i in ids if int(i) not in _SKIP_ON_DECODE]


def _write_json(directory, config: dict) -> None:
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tmp = directory / (CONFIG_FILE + ".tmp")
  tmp.write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
  os.replace(tmp, directory / CONFIG_FILE)


def _read_json(directory) -> dict:
  path = Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
  return json.loads(path.read_text(encoding="utf-8"))


class _VocabTokenizer:
  """Shared logic for tokenizers backed by an explicit id -> token list.

  Subclasses set ``kind`` and implement ``tokens`` and ``_join``.
  ``vocab`` is the full list, specials first, so ``vocab[i]`` is token ``i``.
  """

  kind = ""

  def __init__(self, vocab: Sequence[str], lowercase: bool = False):
    vocab = list(vocab)
    if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f"vocab must start with {SPECIAL_TOKENS}")
    if len(set(vocab)) != len(vocab):
      raise ValueError("vocab has duplicate tokens")
    self.vocab = vocab
    self.lowercase = lowercase
    self._stoi = {tok: i for i, tok in enumerate(vocab)}

  # --- building ---------------------------------------------------------
  @staticmethod
  def _build_vocab(counts: collections.Counter, min_freq: int, max_size: int | None) -> list[str]:
    """Specials, then tokens with count >= min_freq sorted by (-count, token)."""
    kept = sorted(
        (tok for tok, c in counts.items() if c >= min_freq and tok not in SPECIAL_TOKENS),
        key=lambda tok: (-counts[tok], tok),
    )
    if max_size is not None:
      kept = kept[: max(0, max_size - len(SPECIAL_TOKENS))]
    return list(SPECIAL_TOKENS) + kept

  @classmethod
  def _count(cls, tokenizer_for_split, texts) -> collections.Counter:
    counts = collections.Counter()
    for t in _check_texts(texts):
      counts.update(tokenizer_for_split.tokens(t))
    return counts

  # --- interface --------------------------------------------------------
  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def tokens(self, text: str) -> list[str]:
    raise NotImplementedError

  def _join(self, toks: list[str]) -> str:
    raise NotImplementedError

  def encode(self, text: str) -> list[int]:
    return [self._stoi.get(tok, UNK_ID) for tok in self.tokens(text)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._join([self.id_to_token(i) for i in _decode_ids(ids)])

  def id_to_token(self, i: int) -> str:
    return self.vocab[int(i)]

  def token_to_id(self, token: str) -> int:
    return self._stoi.get(token, UNK_ID)

  def _config(self) -> dict:
    return {"kind": self.kind, "lowercase": self.lowercase, "vocab": self.vocab}

  @classmethod
  def _from_config(cls, config: dict):
    return cls(config["vocab"], lowercase=config["lowercase"])

  def save(self, directory) -> None:
    _write_json(directory, self._config())

  @classmethod
  def load(cls, directory):
    config = _read_json(directory)
    if config.get("kind") != cls.kind:
      raise ValueError(f"{directory} holds a {config.get('kind')!r} tokenizer, not {cls.kind!r}")
    return cls._from_config(config)

  def __repr__(self) -> str:
    return f"{type(self).__name__}(vocab_size={self.vocab_size}, lowercase={self.lowercase})"


class WordTokenizer(_VocabTokenizer):
  """Word level, optionally lower-cased.

  With ``lang`` (e.g. ``"en"``) words come from the Moses tokenizer
  (``sacremoses``, hyphens split as ``@-@``) and ``decode`` returns the Moses
  detokenisation: plain text such as ``"a man's t-shirt."``. With
  ``lang=None`` (files saved before ``lang`` existed) words are
  ``\\w+|[^\\w\\s]`` matches and ``decode`` joins them with single spaces.
  """

  kind = "word"

  def __init__(self, vocab: Sequence[str], lowercase: bool = False, lang: str | None = None):
    super().__init__(vocab, lowercase)
    self.lang = lang
    if lang is not None:
      self._moses_tok = sacremoses.MosesTokenizer(lang=lang)
      self._moses_detok = sacremoses.MosesDetokenizer(lang=lang)

  @classmethod
  def fit(cls, texts: Iterable[str], min_freq: int = 2, lowercase: bool = True,
          max_size: int | None = None, lang: str | None = None) -> "WordTokenizer":
    """Vocab of tokens seen >= ``min_freq`` times; ``max_size`` counts specials."""
    counts = cls._count(cls(SPECIAL_TOKENS, lowercase, lang), texts)
    return cls(cls._build_vocab(counts, min_freq, max_size), lowercase, lang)

  def tokens(self, text: str) -> list[str]:
    text = _check_text(text)
    text = text.lower() if self.lowercase else text
    if self.lang is None:
      return _WORD_RE.findall(text)
    return self._moses_tok.tokenize(text, aggressive_dash_splits=True, escape=False)

  def _join(self, toks: list[str]) -> str:
    if self.lang is None:
      return " ".join(toks)
    return self._moses_detok.detokenize(toks)

  def _config(self) -> dict:
    return {**super()._config(), "lang": self.lang}

  @classmethod
  def _from_config(cls, config: dict) -> "WordTokenizer":
    return cls(config["vocab"], lowercase=config["lowercase"], lang=config.get("lang"))

  def __getstate__(self):
    return self._config()

  def __setstate__(self, state):
    self.__init__(state["vocab"], state["lowercase"], state.get("lang"))

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, lang={self.lang!r})"


class CharTokenizer(_VocabTokenizer):
  """One token per character (spaces included); ``decode`` joins with ''."""

  kind = "char"

  @classmethod
  def fit(cls, texts: Iterable[str], lowercase: bool = False) -> "CharTokenizer":
    """Vocab of every character seen in ``texts``."""
    counts = cls._count(cls(SPECIAL_TOKENS, lowercase), texts)
    return cls(cls._build_vocab(counts, 1, None), lowercase)

  def tokens(self, text: str) -> list[str]:
    text = _check_text(text)
    return list(text.lower() if self.lowercase else text)

  def _join(self, toks: list[str]) -> str:
    return "".join(toks)


class WhitespaceTokenizer(_VocabTokenizer):
  """Whitespace-split symbols, case kept (e.g. phonemes "HH AH0 L OW1")."""

  kind = "whitespace"

  @classmethod
  def fit(cls, texts: Iterable[str]) -> "WhitespaceTokenizer":
    """Vocab of every symbol seen in ``texts``."""
    counts = cls._count(cls(SPECIAL_TOKENS), texts)
    return cls(cls._build_vocab(counts, 1, None))

  def tokens(self, text: str) -> list[str]:
    return _check_text(text).split()

  def _join(self, toks: list[str]) -> str:
    return " ".join(toks)


class SentencePieceTokenizer:
  """SentencePiece BPE / unigram model with the fixed special ids.

  Trained in memory (no temporary files), single-threaded so that the same
  texts give the same model bytes. Unknown pieces decode as ``<unk>``.

  With ``byte_fallback=True`` every character of the training texts is kept
  (``character_coverage`` 1) and any other character is spelt as UTF-8 byte
  pieces (``<0xC3>``...), so no text ever encodes to ``UNK_ID`` and a
  decoded output never contains ``<unk>`` (a stray ``UNK_ID`` from a model is
  dropped on decoding: it stands for no text). A decoded text is always one
  line: line breaks that byte pieces spell become spaces.
  """

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes, lowercase: bool = True, byte_fallback: bool = False):
    self.model_proto = bytes(model_proto)
    self.lowercase = lowercase
    self.byte_fallback = byte_fallback
    self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
    got = (self._sp.unk_id(), self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id())
    if got != (UNK_ID, PAD_ID, BOS_ID, EOS_ID):
      raise ValueError(f"sentencepiece model has special ids {got}, expected (0, 1, 2, 3)")

  @classmethod
  def fit(cls, texts: Iterable[str], vocab_size: int, model_type: str = "bpe",
          lowercase: bool = True, byte_fallback: bool = False) -> "SentencePieceTokenizer":
    """Train on ``texts``; ``vocab_size`` includes the 4 specials (and,
    with ``byte_fallback``, the 256 byte pieces)."""
    if model_type not in ("bpe", "unigram"):
      raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    texts = _check_texts(texts)
    if lowercase:
      texts = [t.lower() for t in texts]
    writer = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(texts),
          model_writer=writer,
          vocab_size=vocab_size,
          model_type=model_type,
          unk_id=UNK_ID, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
          unk_piece=UNK_TOKEN, pad_piece=PAD_TOKEN, bos_piece=BOS_TOKEN, eos_piece=EOS_TOKEN,
          unk_surface=UNK_TOKEN,
          num_threads=1,
          minloglevel=2,
          byte_fallback=byte_fallback,
          character_coverage=1.0 if byte_fallback else 0.9995,
      )
    except RuntimeError as e:  # e.g. "Vocabulary size too high (40). Please set it to ..."
      raise ValueError(f"sentencepiece training failed: {str(e).splitlines()[0]}") from e
    return cls(writer.getvalue(), lowercase, byte_fallback)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def _prep(self, text: str) -> str:
    text = _check_text(text)
    return text.lower() if self.lowercase else text

  def tokens(self, text: str) -> list[str]:
    return self._sp.encode(self._prep(text), out_type=str)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(self._prep(text))

  def decode(self, ids: Iterable[int]) -> str:
    ids = _decode_ids(ids)
    if self.byte_fallback:
      ids = [i for i in ids if i != UNK_ID]
    # One line, whatever the pieces: byte pieces can spell "\n", "\x1d", ...
    # (an untrained model emits them), and a translation is one line of a file.
    return " ".join(self._sp.decode(ids).splitlines())

  def id_to_token(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def token_to_id(self, token: str) -> int:
    return self._sp.piece_to_id(token)

  def save(self, directory) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (SPM_MODEL_FILE + ".tmp")
    tmp.write_bytes(self.model_proto)
    os.replace(tmp, directory / SPM_MODEL_FILE)
    _write_json(directory, {"kind": self.kind, "lowercase": self.lowercase,
                            "byte_fallback": self.byte_fallback, "model": SPM_MODEL_FILE})

  @classmethod
  def load(cls, directory) -> "SentencePieceTokenizer":
    config = _read_json(directory)
    if config.get("kind") != cls.kind:
      raise ValueError(f"{directory} holds a {config.get('kind')!r} tokenizer, not {cls.kind!r}")
    proto = (Path(directory) / config["model"]).read_bytes()
    return cls(proto, lowercase=config["lowercase"],
               byte_fallback=config.get("byte_fallback", False))

  # The SWIG processor is rebuilt from the proto bytes when pickled (e.g. by
  # multiprocessing data loaders).
  def __getstate__(self):
    return {"model_proto": self.model_proto, "lowercase": self.lowercase,
            "byte_fallback": self.byte_fallback}

  def __setstate__(self, state):
    self.__init__(state["model_proto"], state["lowercase"], state.get("byte_fallback", False))

  def __repr__(self) -> str:
    return (f"SentencePieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
            f"byte_fallback={self.byte_fallback})")


Tokenizer = WordTokenizer | CharTokenizer | WhitespaceTokenizer | SentencePieceTokenizer

_KINDS = {cls.kind: cls for cls in (WordTokenizer, CharTokenizer, WhitespaceTokenizer, SentencePieceTokenizer)}


def load_tokenizer(directory) -> Tokenizer:
  """Load whichever tokenizer ``save`` wrote to ``directory``."""
  kind = _read_json(directory).get("kind")
  if kind not in _KINDS:
    raise ValueError(f"unknown tokenizer kind {kind!r} in {directory}; known: {sorted(_KINDS)}")
  return _KINDS[kind].load(directory)


def to_json(tokenizer) -> dict[str, str]:
  """A tokenizer's saved files as `{filename: base64}` (fits in JSON)."""
  with tempfile.TemporaryDirectory() as d:
    tokenizer.save(d)
    return {name: base64.b64encode(Path(d, name).read_bytes()).decode("ascii")
            for name in sorted(os.listdir(d))}


def from_json(files: dict[str, str]) -> Tokenizer:
  """The tokenizer `to_json` described."""
  with tempfile.TemporaryDirectory() as d:
    for name, data in files.items():
      Path(d, os.path.basename(name)).write_bytes(base64.b64decode(data))
    return load_tokenizer(d)
