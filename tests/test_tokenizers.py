"""Tests for flax_attn.tokenizers."""

import pickle

import numpy as np
import pytest

from flax_attn import tokenizers as tok

SENTS = [
    "A man in a blue shirt is standing.",
    "A woman, in a red dress, is walking!",
    "Two men are standing in a blue room.",
    "a dog is running in the snow.",
]


def test_special_ids_fixed():
  assert (tok.UNK_ID, tok.PAD_ID, tok.BOS_ID, tok.EOS_ID) == (0, 1, 2, 3)
  assert tok.SPECIAL_TOKENS == ("<unk>", "<pad>", "<sos>", "<eos>")
  for t in (tok.WordTokenizer.fit(SENTS), tok.CharTokenizer.fit(SENTS),
            tok.WhitespaceTokenizer.fit(SENTS)):
    assert [t.id_to_token(i) for i in range(4)] == list(tok.SPECIAL_TOKENS)


def test_word_tokens_and_vocab_order():
  t = tok.WordTokenizer.fit(SENTS, min_freq=2)
  assert t.tokens("A man, in Blue!") == ["a", "man", ",", "in", "blue", "!"]
  # Sorted by (-freq, token): "a" (6x) first, then "in" (4x), ...
  assert t.vocab[4:6] == ["a", "in"]
  assert "dog" not in t.vocab  # seen once < min_freq
  assert t.encode("a dog") == [t.token_to_id("a"), tok.UNK_ID]


def test_word_round_trip_and_decode_skips_specials():
  t = tok.WordTokenizer.fit(SENTS, min_freq=1)
  ids = t.encode("A man is standing in the snow.")
  assert t.decode(ids) == "a man is standing in the snow ."
  padded = [tok.BOS_ID] + ids + [tok.EOS_ID, tok.PAD_ID, tok.PAD_ID]
  assert t.decode(np.array(padded)) == "a man is standing in the snow ."
  assert t.decode([tok.UNK_ID]) == "<unk>"


def test_word_max_size_and_case():
  t = tok.WordTokenizer.fit(SENTS, min_freq=1, max_size=6)
  assert t.vocab_size == 6
  cased = tok.WordTokenizer.fit(SENTS, min_freq=1, lowercase=False)
  assert "A" in cased.vocab and cased.tokens("A") == ["A"]


def test_char_round_trip():
  t = tok.CharTokenizer.fit(SENTS)
  assert " " in t.vocab
  text = "a man is walking."
  assert t.tokens("ab c") == ["a", "b", " ", "c"]
  assert t.decode(t.encode(text)) == text
  assert t.encode("~")[0] == tok.UNK_ID


def test_whitespace_round_trip_keeps_case():
  t = tok.WhitespaceTokenizer.fit(["HH AH0 L OW1", "W ER1 L D"])
  assert t.tokens(" HH  AH0 ") == ["HH", "AH0"]
  assert t.decode(t.encode("W ER1 L D")) == "W ER1 L D"
  assert t.encode("hh") == [tok.UNK_ID]


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece(tmp_path, model_type):
  texts = SENTS * 20
  a = tok.SentencePieceTokenizer.fit(texts, vocab_size=30, model_type=model_type)
  b = tok.SentencePieceTokenizer.fit(texts, vocab_size=30, model_type=model_type)
  assert a.model_proto == b.model_proto  # deterministic
  assert a.vocab_size == 30
  assert [a.id_to_token(i) for i in range(4)] == list(tok.SPECIAL_TOKENS)
  ids = a.encode("A man is standing.")
  assert tok.BOS_ID not in ids and tok.EOS_ID not in ids
  assert a.decode([tok.BOS_ID] + ids + [tok.EOS_ID, tok.PAD_ID]) == "a man is standing."
  assert a.decode(a.encode("zzq")).count("<unk>") >= 1
  a.save(tmp_path)
  c = tok.load_tokenizer(tmp_path)
  assert isinstance(c, tok.SentencePieceTokenizer) and c.encode("a dog") == a.encode("a dog")
  d = pickle.loads(pickle.dumps(a))
  assert d.encode("a dog") == a.encode("a dog")


def test_sentencepiece_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match="model_type"):
    tok.SentencePieceTokenizer.fit(SENTS, vocab_size=20, model_type="word")
  with pytest.raises(ValueError, match="Vocabulary size"):
    tok.SentencePieceTokenizer.fit(SENTS, vocab_size=5000)


@pytest.mark.parametrize("cls", [tok.WordTokenizer, tok.CharTokenizer, tok.WhitespaceTokenizer])
def test_save_load_round_trip(tmp_path, cls):
  t = cls.fit(SENTS)
  t.save(tmp_path / "tok")
  for loaded in (cls.load(tmp_path / "tok"), tok.load_tokenizer(tmp_path / "tok")):
    assert type(loaded) is cls
    assert loaded.vocab == t.vocab and loaded.lowercase == t.lowercase
    assert loaded.encode(SENTS[0]) == t.encode(SENTS[0])


def test_load_wrong_kind_and_missing(tmp_path):
  tok.CharTokenizer.fit(SENTS).save(tmp_path)
  with pytest.raises(ValueError, match="char"):
    tok.WordTokenizer.load(tmp_path)
  with pytest.raises(FileNotFoundError):
    tok.load_tokenizer(tmp_path / "nope")


def test_fit_deterministic():
  assert tok.WordTokenizer.fit(SENTS).vocab == tok.WordTokenizer.fit(list(reversed(SENTS))).vocab


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a"]])
def test_non_str_raises_type_error(bad):
  t = tok.WordTokenizer.fit(SENTS)
  with pytest.raises(TypeError, match="str"):
    t.encode(bad)
  with pytest.raises(TypeError):
    tok.CharTokenizer.fit([bad])


def test_fit_rejects_single_string():
  with pytest.raises(TypeError):
    tok.WordTokenizer.fit("a man")


MOSES_SENTS = [
    "A man's T-shirt, \"big\" (red) & 3.5 m long.",
    "Two dogs - one brown - play; it's fun!",
    "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt.",
]


@pytest.mark.parametrize("lowercase", [False, True])
def test_word_tokenizer_with_a_language_detokenises(lowercase):
  t = tok.WordTokenizer.fit(MOSES_SENTS, min_freq=1, lowercase=lowercase, lang="en")
  for s in MOSES_SENTS:
    assert t.decode(t.encode(s)) == (s.lower() if lowercase else s)
  assert t.tokens("a T-shirt")[-3:] == ["t" if lowercase else "T", "@-@", "shirt"]
  assert t.tokens("A man's hat")[:3] == ["a" if lowercase else "A", "man", "'s"]


def test_word_tokenizer_detokenises_unknown_words_as_unk():
  t = tok.WordTokenizer.fit(["a red hat ."], min_freq=1, lang="en")
  assert t.decode(t.encode("A red zebra.")) == "a red <unk>."


def test_word_tokenizer_without_a_language_keeps_the_regex_and_spaces():
  t = tok.WordTokenizer.fit(MOSES_SENTS, min_freq=1)
  assert t.lang is None
  assert t.decode(t.encode("A man's T-shirt.")) == "a man ' s t - shirt ."


def test_word_tokenizer_language_survives_save_load_and_pickle(tmp_path):
  t = tok.WordTokenizer.fit(MOSES_SENTS, min_freq=1, lang="de")
  t.save(tmp_path)
  for loaded in (tok.load_tokenizer(tmp_path), pickle.loads(pickle.dumps(t))):
    assert loaded.lang == "de" and loaded.vocab == t.vocab
    assert loaded.decode(loaded.encode(MOSES_SENTS[2])) == MOSES_SENTS[2].lower()


def test_word_tokenizer_saved_before_languages_loads_as_regex(tmp_path):
  import json
  t = tok.WordTokenizer.fit(SENTS, min_freq=1)
  (tmp_path / "tokenizer.json").write_text(json.dumps(
      {"kind": "word", "lowercase": True, "vocab": t.vocab}))
  assert tok.load_tokenizer(tmp_path).lang is None


def test_cased_sentencepiece_decodes_plain_text():
  t = tok.SentencePieceTokenizer.fit(SENTS * 20, vocab_size=60, lowercase=False)
  for s in SENTS:
    assert t.decode(t.encode(s)) == s


def test_sentencepiece_byte_fallback_never_gives_unk(tmp_path):
  texts = SENTS * 20
  t = tok.SentencePieceTokenizer.fit(texts, vocab_size=300, lowercase=False, byte_fallback=True)
  plain = tok.SentencePieceTokenizer.fit(texts, vocab_size=40, lowercase=False)
  unseen = "Ein Café für Zoë — 3€ «ok»"  # characters the training texts never had
  assert tok.UNK_ID in plain.encode(unseen) and "<unk>" in plain.decode(plain.encode(unseen))
  ids = t.encode(unseen)
  assert tok.UNK_ID not in ids
  assert t.decode(ids) == unseen
  # A stray UNK_ID from a model stands for no text: dropped, never shown.
  assert t.decode([ids[0], tok.UNK_ID] + ids[1:]) == unseen
  for s in SENTS:
    assert t.decode(t.encode(s)) == s
  t.save(tmp_path)
  for loaded in (tok.load_tokenizer(tmp_path), pickle.loads(pickle.dumps(t))):
    assert loaded.byte_fallback and loaded.encode(unseen) == ids
    assert loaded.decode([tok.UNK_ID]) == ""
  # Byte pieces can spell line breaks; a decoded text stays one line.
  breaks = [t.token_to_id(f"<0x{b:02X}>") for b in (0x0A, 0x0B, 0x1D, 0x0D)]
  text = t.decode(ids[:2] + breaks + ids[2:4])
  assert len(text.splitlines()) == 1 and text.startswith(t.decode(ids[:2]))
  assert "\n" in t._sp.decode(breaks)  # what the raw SentencePiece decoder gives
