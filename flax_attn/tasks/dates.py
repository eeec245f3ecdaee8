"""Date normalisation: human-readable dates -> ISO ``YYYY-MM-DD``.

Examples of sources (all for 1998-03-03, a Tuesday)::

    tuesday, 3 march 1998     3 march 1998      March 3, 1998
    Mar 03, 1998              3 MAR 1998        Tue 3 Mar 98
    3rd of march 1998         3/3/98            03.03.1998      1998/03/03

Conventions (so that no source is ambiguous):

* All-numeric dates are **day first** (``3/4/98`` is 3 April 1998), except the
  year-first forms, which always have a four-digit year (``1998-04-03``,
  ``1998/04/03``, ``1998.04.03``). Month-first is used only with month names.
* Years run 1950-2049; a two-digit year ``yy`` means 19yy for 50-99 and 20yy
  for 00-49.
* Weekday names are those of the actual date; English names, never the locale's.
* Case varies at random: lower (50%), Title (30%) or UPPER (20%).

Splits hold disjoint calendar dates: ``test`` and ``val`` each draw distinct
dates (one example per date) from a seeded permutation of all 36,525 days, and
``train`` cycles through the remaining dates in shuffled passes, so one train
date appears in several formats. Each split uses its own generator derived
from ``seed``, so the test split does not change with ``num_train``.
"""

from __future__ import annotations

import datetime

import numpy as np

from flax_attn.tasks import Split

FIRST_DATE = datetime.date(1950, 1, 1)
LAST_DATE = datetime.date(2049, 12, 31)
NUM_DAYS = (LAST_DATE - FIRST_DATE).days + 1  # 36525

MONTHS = ("january", "february", "march", "april", "may", "june", "july",
          "august", "september", "october", "november", "december")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Lower-case templates; the case variant is applied afterwards. Fields:
# d/dd day (3/03), m/mm month number, yy/yyyy year, month/mon month name (full/
# 3-letter), weekday/wkd weekday name (full/3-letter), dth ordinal day (3rd).
FORMATS = (
    "{weekday}, {d} {month} {yyyy}",
    "{weekday} {d} {month} {yyyy}",
    "{d} {month} {yyyy}",
    "{dd} {month} {yyyy}",
    "{d} {month}, {yyyy}",
    "{month} {d}, {yyyy}",
    "{month} {d} {yyyy}",
    "{weekday}, {month} {d}, {yyyy}",
    "{mon} {dd}, {yyyy}",
    "{mon} {d}, {yyyy}",
    "{d} {mon} {yyyy}",
    "{dd} {mon} {yy}",
    "{d} {mon} {yy}",
    "{wkd} {d} {mon} {yy}",
    "{wkd}, {d} {mon} {yyyy}",
    "{dth} {month} {yyyy}",
    "{dth} of {month} {yyyy}",
    "{weekday} the {dth} of {month} {yyyy}",
    "{month} {dth}, {yyyy}",
    "{d}/{m}/{yy}",
    "{dd}/{mm}/{yy}",
    "{d}/{m}/{yyyy}",
    "{dd}/{mm}/{yyyy}",
    "{dd}.{mm}.{yyyy}",
    "{d}.{m}.{yy}",
    "{dd}-{mm}-{yyyy}",
    "{yyyy}-{mm}-{dd}",
    "{yyyy}/{mm}/{dd}",
    "{yyyy}.{mm}.{dd}",
)
CASES = ("lower", "title", "upper")
_CASE_PROBS = (0.5, 0.3, 0.2)


def _ordinal(day: int) -> str:
  suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
  return f"{day}{suffix}"


def expand_year(yy: int) -> int:
  """Two-digit year -> four digits: 50-99 -> 19yy, 00-49 -> 20yy."""
  if not 0 <= yy <= 99:
    raise ValueError(f"two-digit year out of range: {yy}")
  return 1900 + yy if yy >= 50 else 2000 + yy


def format_date(date: datetime.date, fmt: int, case: str = "lower") -> str:
  """Render ``date`` with ``FORMATS[fmt]`` in one of ``CASES``."""
  weekday, month = WEEKDAYS[date.weekday()], MONTHS[date.month - 1]
  text = FORMATS[fmt].format(
      d=date.day, dd=f"{date.day:02d}", m=date.month, mm=f"{date.month:02d}",
      yy=f"{date.year % 100:02d}", yyyy=f"{date.year:04d}",
      month=month, mon=month[:3], weekday=weekday, wkd=weekday[:3], dth=_ordinal(date.day),
  )
  if case == "lower":
    return text
  if case == "upper":
    return text.upper()
  if case == "title":
    return " ".join(w.capitalize() for w in text.split(" "))
  raise ValueError(f"case must be one of {CASES}, got {case!r}")


def _make_split(days: np.ndarray, rng: np.random.Generator) -> Split:
  """One example per entry of ``days`` ([n] offsets from FIRST_DATE)."""
  fmts = rng.integers(len(FORMATS), size=len(days))
  cases = rng.choice(len(CASES), size=len(days), p=_CASE_PROBS)
  src, trg = [], []
  for day, fmt, case in zip(days.tolist(), fmts.tolist(), cases.tolist()):
    date = FIRST_DATE + datetime.timedelta(days=day)
    src.append(format_date(date, fmt, CASES[case]))
    trg.append(date.isoformat())
  return Split(src=src, trg=trg, refs=None)


def load_splits(seed: int = 0, num_train: int = 50000, num_val: int = 1000,
                num_test: int = 2000) -> dict[str, Split]:
  """``{'train', 'val', 'test'}`` splits; deterministic given the arguments."""
  if min(num_train, num_val, num_test) < 0:
    raise ValueError("split sizes must be non-negative")
  if num_val + num_test >= NUM_DAYS:
    raise ValueError(f"num_val + num_test must be below {NUM_DAYS} so train keeps some dates")
  perm = np.random.default_rng([seed, 0]).permutation(NUM_DAYS)
  test_days = perm[:num_test]
  val_days = perm[num_test:num_test + num_val]
  pool = perm[num_test + num_val:]

  train_rng = np.random.default_rng([seed, 1])
  passes = -(-num_train // len(pool))  # ceil
  train_days = np.concatenate([train_rng.permutation(pool) for _ in range(max(passes, 1))])[:num_train]
  return {
      "train": _make_split(train_days, train_rng),
      "val": _make_split(val_days, np.random.default_rng([seed, 2])),
      "test": _make_split(test_days, np.random.default_rng([seed, 3])),
  }
