"""Multi30k Task 1, German -> English or English -> German (raw, original-case text).

Reads ``{train,val,test_2016_flickr,test_2017_flickr}.{de,en}`` from
``data_dir`` into splits ``'train'`` (29,000), ``'val'`` (1,014), ``'test'``
(test_2016_flickr, 1,000) and, when present, ``'test2017'`` (1,000). ``src`` is
German and ``trg`` English by default (``src_lang="en", trg_lang="de"`` turns it
round), one line per example without its newline.

With ``download=True`` missing files are fetched from the ``multi30k/dataset``
repository at a pinned commit, gunzipped, checked against ``SHA256`` and
written atomically. Cite Elliott et al. (2016), and for test2017 also Elliott et
al. (2017); see ``shared/data/multi30k/SOURCE.md``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from flax_attn.tasks import Split

COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
URL_TEMPLATE = (f"https://raw.githubusercontent.com/multi30k/dataset/{COMMIT}"
                "/data/task1/raw/{name}.gz")
SRC_LANG, TRG_LANG = "de", "en"
LANGS = ("de", "en")

# split name -> file stem; the last one is optional.
SPLIT_FILES = {"train": "train", "val": "val", "test": "test_2016_flickr",
               "test2017": "test_2017_flickr"}
OPTIONAL_SPLITS = frozenset({"test2017"})

# sha256 of the decompressed files (from shared/data/multi30k/SOURCE.md).
SHA256 = {
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2017_flickr.de": "c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081",
    "test_2017_flickr.en": "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98",
}


def default_data_dir() -> Path | None:
  """``<repo root>/../shared/data/multi30k`` if that directory exists, else None."""
  path = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "multi30k").resolve()
  return path if path.is_dir() else None


def _fetch(url: str, timeout: float = 60.0) -> bytes:
  """Bytes at ``url`` (tests replace this function; there is no network there)."""
  with urllib.request.urlopen(url, timeout=timeout) as response:
    return response.read()


def download_file(data_dir, name: str) -> Path:
  """Fetch ``name`` (e.g. ``'val.de'``), gunzip, verify sha256, write atomically."""
  if name not in SHA256:
    raise ValueError(f"unknown Multi30k file {name!r}; known: {sorted(SHA256)}")
  data = gzip.decompress(_fetch(URL_TEMPLATE.format(name=name)))
  digest = hashlib.sha256(data).hexdigest()
  if digest != SHA256[name]:
    raise ValueError(f"sha256 mismatch for {name}: got {digest}, expected {SHA256[name]}")
  data_dir = Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, data_dir / name)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return data_dir / name


def _read_lines(path: Path) -> list[str]:
  """Lines of a UTF-8 file without their '\\n' (split on '\\n' only, not on U+2028)."""
  text = path.read_text(encoding="utf-8")
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  return lines


def load_splits(data_dir, download: bool = False, max_examples: int | None = None,
                src_lang: str = SRC_LANG, trg_lang: str = TRG_LANG) -> dict[str, Split]:
  """``{'train', 'val', 'test'[, 'test2017']}``: ``src_lang`` sources, ``trg_lang`` targets.

  Args:
    data_dir: directory holding (or to receive) the ``<stem>.<lang>`` files.
    download: fetch missing files instead of raising ``FileNotFoundError``.
    max_examples: if set, keep only the first ``max_examples`` lines per split.
    src_lang, trg_lang: ``"de", "en"`` (the default) or ``"en", "de"``.
  """
  if data_dir is None:
    raise ValueError("data_dir is None; pass a directory (see default_data_dir())")
  if {src_lang, trg_lang} != set(LANGS):
    raise ValueError(f"src_lang, trg_lang must be 'de', 'en' or 'en', 'de'; "
                     f"got {src_lang!r}, {trg_lang!r}")
  data_dir = Path(data_dir)
  splits = {}
  for split, stem in SPLIT_FILES.items():
    names = [f"{stem}.{src_lang}", f"{stem}.{trg_lang}"]
    missing = [n for n in names if not (data_dir / n).is_file()]
    if missing and download:
      for name in missing:
        download_file(data_dir, name)
    elif missing and split in OPTIONAL_SPLITS:
      continue
    elif missing:
      raise FileNotFoundError(
          f"Multi30k file {data_dir / missing[0]} not found; pass download=True to fetch it")
    src, trg = (_read_lines(data_dir / n) for n in names)
    if len(src) != len(trg):
      raise ValueError(f"{data_dir / names[1]} has {len(trg)} lines but "
                       f"{data_dir / names[0]} has {len(src)}")
    splits[split] = Split(src=src[:max_examples], trg=trg[:max_examples], refs=None)
  return splits
