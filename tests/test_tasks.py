"""Tests for flax_attn.tasks (dates, synthetic, g2p, multi30k)."""

import datetime
import gzip
import hashlib
import re
import shutil
from pathlib import Path

import pytest

from flax_attn.tasks import Split, dates, g2p, multi30k, synthetic

MULTI30K_DIR = Path(__file__).resolve().parents[2] / "shared/data/multi30k"


# --- Split -------------------------------------------------------------------
def test_split_validates_lengths():
  s = Split(src=["a"], trg=["b"], refs=None)
  assert len(s) == 1 and s.references() == [["b"]]
  with pytest.raises(ValueError):
    Split(src=["a"], trg=[], refs=None)


# --- dates -------------------------------------------------------------------
_MONTHS = {m: i + 1 for i, m in enumerate(dates.MONTHS)} | {m[:3]: i + 1 for i, m in enumerate(dates.MONTHS)}
_WEEKDAYS = {w: i for i, w in enumerate(dates.WEEKDAYS)} | {w[:3]: i for i, w in enumerate(dates.WEEKDAYS)}


def _parse(src: str) -> tuple[datetime.date, int | None]:
  """Independent parser for the documented conventions; returns (date, weekday or None)."""
  words = re.findall(r"[a-z]+|\d+", src.lower())
  month = next((_MONTHS[w] for w in words if w in _MONTHS), None)
  weekday = next((_WEEKDAYS[w] for w in words if w in _WEEKDAYS), None)
  nums = [w for w in words if w.isdigit()]
  if month is not None:  # day precedes year whenever a month name is used
    assert len(nums) == 2, src
    day, year = nums
  elif len(nums[0]) == 4:  # year first only with four digits
    year, month, day = nums
  else:  # otherwise day first
    day, month, year = nums
  year = int(year) if len(year) == 4 else dates.expand_year(int(year))
  return datetime.date(year, int(month), int(day)), weekday


def test_dates_correct_and_weekdays_consistent():
  splits = dates.load_splits(seed=0, num_train=3000, num_val=300, num_test=300)
  n_weekday = 0
  for split in splits.values():
    assert split.refs is None
    for src, trg in zip(split.src, split.trg):
      date = datetime.date.fromisoformat(trg)
      parsed, weekday = _parse(src)
      assert parsed == date, (src, trg)
      if weekday is not None:
        n_weekday += 1
        assert weekday == date.weekday(), (src, trg)
      assert datetime.date(1950, 1, 1) <= date <= datetime.date(2049, 12, 31)
  assert n_weekday > 100


def test_dates_formats_and_cases_covered():
  split = dates.load_splits(num_train=5000, num_val=0, num_test=0)["train"]
  joined = "\n".join(split.src)
  assert re.search(r"^\d{1,2}/\d{1,2}/\d{2}$", joined, re.M)
  assert re.search(r"^\d{2}\.\d{2}\.\d{4}$", joined, re.M)
  assert re.search(r"^\d{4}-\d{2}-\d{2}$", joined, re.M)
  assert re.search(r"^[A-Z][a-z]{2} \d{2}, \d{4}$", joined, re.M)  # Mar 03, 1998
  assert re.search(r"^\d{1,2} [A-Z]{3} \d{4}$", joined, re.M)  # 3 MAR 1998
  assert re.search(r"^[a-z]+day, \d{1,2} [a-z]+ \d{4}$", joined, re.M)
  assert re.search(r"^[A-Z][a-z]{2} \d{1,2} [A-Z][a-z]{2} \d{2}$", joined, re.M)  # Tue 3 Mar 98


def test_format_date_examples():
  d = datetime.date(1998, 3, 3)
  assert dates.format_date(d, 0) == "tuesday, 3 march 1998"
  assert dates.format_date(d, dates.FORMATS.index("{mon} {dd}, {yyyy}"), "title") == "Mar 03, 1998"
  assert dates.format_date(d, dates.FORMATS.index("{d} {mon} {yyyy}"), "upper") == "3 MAR 1998"
  assert dates.format_date(d, dates.FORMATS.index("{dth} of {month} {yyyy}")) == "3rd of march 1998"
  assert dates.format_date(datetime.date(2011, 4, 12),
                           dates.FORMATS.index("{d}/{m}/{yy}")) == "12/4/11"
  assert [dates.expand_year(y) for y in (0, 49, 50, 99)] == [2000, 2049, 1950, 1999]


def test_dates_splits_disjoint_and_deterministic():
  a = dates.load_splits(seed=1, num_train=40000, num_val=500, num_test=1000)
  b = dates.load_splits(seed=1, num_train=40000, num_val=500, num_test=1000)
  assert a == b
  train, val, test = (set(a[k].trg) for k in ("train", "val", "test"))
  assert len(test) == 1000 and len(val) == 500  # one example per held-out date
  assert not (train & test) and not (train & val) and not (val & test)
  # The test split does not depend on num_train; the seed matters.
  assert dates.load_splits(seed=1, num_train=10, num_val=500, num_test=1000)["test"] == a["test"]
  assert dates.load_splits(seed=2, num_train=10, num_val=5, num_test=50)["test"].trg != a["test"].trg[:50]


# --- synthetic ---------------------------------------------------------------
@pytest.mark.parametrize("task", ["reverse", "sort", "copy"])
def test_synthetic(task):
  splits = synthetic.load_splits(task=task, seed=0, num_train=500, num_val=50, num_test=50)
  assert splits == synthetic.load_splits(task=task, seed=0, num_train=500, num_val=50, num_test=50)
  for split in splits.values():
    for src, trg in zip(split.src, split.trg):
      s = src.split()
      assert 3 <= len(s) <= 12 and set(s) <= set("abcdefghijklmnopqrst")
      expected = {"reverse": s[::-1], "sort": sorted(s), "copy": s}[task]
      assert trg.split() == expected
  assert not set(splits["test"].src) & set(splits["train"].src)
  assert not set(splits["val"].src) & set(splits["train"].src)


def test_synthetic_sort_uses_vocab_order_and_validates():
  split = synthetic.load_splits("sort", num_train=20, num_val=0, num_test=0,
                                vocab=["z", "y", "x"], min_len=2, max_len=4)["train"]
  order = {"z": 0, "y": 1, "x": 2}
  for trg in split.trg:
    keys = [order[t] for t in trg.split()]
    assert keys == sorted(keys)
  with pytest.raises(ValueError):
    synthetic.load_splits("shuffle")
  with pytest.raises(ValueError):
    synthetic.load_splits(vocab=["a b"])
  with pytest.raises(ValueError):  # only 2 distinct sequences exist
    synthetic.load_splits(num_test=5, vocab=["a", "b"], min_len=1, max_len=1)


# --- g2p ---------------------------------------------------------------------
def test_g2p_splits():
  splits = g2p.load_splits()
  sizes = {k: len(v) for k, v in splits.items()}
  total = sum(sizes.values())
  assert total > 100_000
  assert 0.88 < sizes["train"] / total < 0.92 and 0.04 < sizes["test"] / total < 0.06
  words = [set(s.src) for s in splits.values()]
  assert not (words[0] & words[1]) and not (words[0] & words[2]) and not (words[1] & words[2])
  for split in splits.values():
    for w, t, r in zip(split.src[:2000], split.trg[:2000], split.refs[:2000]):
      assert re.fullmatch(r"[a-z']+", w)
      assert r[0] == t and len(set(r)) == len(r)
      assert not re.search(r"\d", t)


def test_g2p_refs_stress_and_determinism():
  tiny = g2p.load_splits(max_examples=50)
  assert all(len(s) == 50 for s in tiny.values())
  assert tiny == g2p.load_splits(max_examples=50)
  # A stable hash decides the split, independent of PYTHONHASHSEED.
  assert g2p.word_hash("hello") == int(hashlib.sha256(b"hello").hexdigest()[:16], 16)
  prons = g2p.pronunciations(keep_stress=False)
  assert prons["read"] == ["R EH D", "R IY D"]
  assert set(prons["tomato"]) == {"T AH M EY T OW", "T AH M AA T OW"}
  stressed = g2p.pronunciations(keep_stress=True)
  assert stressed["hello"][0].split()[-1] in ("OW0", "OW1", "OW2")
  assert g2p.strip_stress(["HH", "AH0", "L", "OW1"]) == ["HH", "AH", "L", "OW"]


# --- multi30k ----------------------------------------------------------------
def test_multi30k_reads_shared_data():
  if not MULTI30K_DIR.is_dir():
    pytest.skip(f"{MULTI30K_DIR} not present")
  splits = multi30k.load_splits(MULTI30K_DIR)
  assert {k: len(v) for k, v in splits.items()} == {
      "train": 29000, "val": 1014, "test": 1000, "test2017": 1000}
  assert all(not s.endswith("\n") for s in splits["train"].src[:100])
  assert splits["test"].refs is None
  tiny = multi30k.load_splits(MULTI30K_DIR, max_examples=3)
  assert tiny["val"].src == splits["val"].src[:3] and tiny["val"].trg == splits["val"].trg[:3]


def test_multi30k_default_data_dir():
  d = multi30k.default_data_dir()
  if MULTI30K_DIR.is_dir():
    assert d == MULTI30K_DIR.resolve()
  else:
    assert d is None or d.is_dir()


def _write_fake(d: Path, lines: int = 3, skip=()):
  for stem in ("train", "val", "test_2016_flickr"):
    for lang in ("de", "en"):
      if f"{stem}.{lang}" not in skip:
        (d / f"{stem}.{lang}").write_text(
            "".join(f"{stem} {lang} {i}\n" for i in range(lines)), encoding="utf-8")


def test_multi30k_optional_test2017_and_line_count_check(tmp_path):
  _write_fake(tmp_path)
  splits = multi30k.load_splits(tmp_path)
  assert set(splits) == {"train", "val", "test"}
  assert splits["val"].src == ["val de 0", "val de 1", "val de 2"]
  (tmp_path / "val.en").write_text("only one line\n", encoding="utf-8")
  with pytest.raises(ValueError, match="val.en"):
    multi30k.load_splits(tmp_path)


def test_multi30k_missing_without_download(tmp_path):
  _write_fake(tmp_path, skip={"val.en"})
  with pytest.raises(FileNotFoundError, match="download=True"):
    multi30k.load_splits(tmp_path)


def test_multi30k_download_verifies_checksum(tmp_path, monkeypatch):
  if not MULTI30K_DIR.is_dir():
    pytest.skip(f"{MULTI30K_DIR} not present")
  fetched = []

  def fake_fetch(url, timeout=60.0):
    fetched.append(url)
    name = url.rsplit("/", 1)[-1].removesuffix(".gz")
    return gzip.compress((MULTI30K_DIR / name).read_bytes())

  monkeypatch.setattr(multi30k, "_fetch", fake_fetch)
  _write_fake(tmp_path, skip={"val.de", "val.en"})
  for stem in ("train", "test_2016_flickr"):  # keep line counts consistent with real val
    for lang in ("de", "en"):
      shutil.copy(MULTI30K_DIR / f"{stem}.{lang}", tmp_path)
  splits = multi30k.load_splits(tmp_path, download=True)
  assert len(splits["val"]) == 1014 and len(splits["test2017"]) == 1000
  assert sorted(u.rsplit("/", 1)[-1] for u in fetched) == [
      "test_2017_flickr.de.gz", "test_2017_flickr.en.gz", "val.de.gz", "val.en.gz"]
  assert all(u.startswith("https://raw.githubusercontent.com/multi30k/dataset/"
                          "a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/")
             for u in fetched)
  assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_multi30k_checksum_mismatch(tmp_path, monkeypatch):
  monkeypatch.setattr(multi30k, "_fetch", lambda url, timeout=60.0: gzip.compress(b"tampered\n"))
  _write_fake(tmp_path, skip={"val.de"})
  with pytest.raises(ValueError, match="sha256 mismatch for val.de"):
    multi30k.load_splits(tmp_path, download=True)
  assert not (tmp_path / "val.de").exists()
  assert not list(tmp_path.iterdir()) or all(p.suffix in (".de", ".en") for p in tmp_path.iterdir())
