"""The command-line tools (`flax_attn.cli`, run as `experiments/*.py`) on the
shared `dates:tiny` run: every bad input is a one-line `error: ...` with exit
code 2, never a traceback.

Runs everywhere (no Multi30k needed). Each contract (an answer, stdin
handling, a progress bar) is a fresh Python process; the error messages of a
tool are checked in one process per tool (`_cli_cases.py`).
"""

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
from _runs import ENV, TIMEOUT, cli_cases as _cli_cases  # noqa: E402


def _cli(script, *args, stdin=b""):
  p = subprocess.run([sys.executable, str(REPO / "experiments" / script), *map(str, args)],
                     env=ENV, capture_output=True, input=stdin, timeout=TIMEOUT)
  return (p.returncode, p.stdout.decode("utf-8", "replace"),
          p.stderr.decode("utf-8", "replace"))


def _assert_usage_error(result, expected: str) -> str:
  """Exit 2, one `error:` line containing `expected`, no traceback."""
  rc, _, err = result
  assert rc == 2, f"exit {rc}\n{err[-3000:]}"
  assert "Traceback" not in err, err[-3000:]
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, err[-3000:]
  assert expected in errors[0], errors[0]
  return errors[0]


@pytest.fixture(scope="module")
def run_dir(dates_run, tmp_path_factory):
  """A copy of the shared 40-step `dates:tiny` run (the tools write outputs
  into it)."""
  import shutil
  workdir = tmp_path_factory.mktemp("cli") / "run"
  shutil.copytree(dates_run, workdir)
  return workdir


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli_files")
  (d / "src.txt").write_text("3 march 1998\ntuesday, 1 may 2001\n")
  (d / "ref.txt").write_text("1998-03-03\n2001-05-01\n")
  (d / "one.txt").write_text("1998-03-03\n")
  (d / "empty.txt").write_text("")
  (d / "bad.txt").write_bytes(b"ok\n\xff\xfe bad\n")
  (d / "empty_dir").mkdir()
  (d / "a_file").write_text("not a workdir\n")
  return d


# (test id, evaluate.py arguments with {run} and {d} to fill in, expected in the error line)
EVALUATE_ERRORS = [
    ("missing_src", ["--workdir={run}", "--src={d}/nope.txt", "--ref={d}/ref.txt"],
     "does not exist"),
    ("empty_src", ["--workdir={run}", "--src={d}/empty.txt", "--ref={d}/ref.txt"], "is empty"),
    ("empty_ref", ["--workdir={run}", "--src={d}/src.txt", "--ref={d}/empty.txt"], "is empty"),
    ("mismatched", ["--workdir={run}", "--src={d}/src.txt", "--ref={d}/one.txt"],
     "has 2 lines but"),
    ("src_without_ref", ["--workdir={run}", "--src={d}/src.txt"], "--src and --ref go together"),
    ("non_utf8_src", ["--workdir={run}", "--src={d}/bad.txt", "--ref={d}/ref.txt"],
     "is not UTF-8 (line 2)"),
    ("beam_size_0", ["--workdir={run}", "--beam_size=0"], "--beam_size must be an integer >= 1"),
    ("negative_alpha", ["--workdir={run}", "--alpha=-1"], "--alpha must be >= 0"),
    ("unknown_split", ["--workdir={run}", "--split=nosuch"], "has no split 'nosuch'"),
    ("workdir_without_checkpoint", ["--workdir={d}/empty_dir"], "no checkpoint found"),
    ("workdir_missing", ["--workdir={d}/does_not_exist"], "no such checkpoint or workdir"),
    ("workdir_is_file", ["--workdir={d}/a_file"], "is a file"),
    ("unknown_flag", ["--workdir={run}", "--no_such_flag=1"], "Unknown command line flag"),
    ("no_workdir", [], "--workdir"),
]


@pytest.fixture(scope="module")
def evaluate_errors(run_dir, files, tmp_path_factory):
  cases = [[a.format(run=run_dir, d=files) for a in c[1]] for c in EVALUATE_ERRORS]
  results = _cli_cases("evaluate", cases, tmp_path_factory.mktemp("evaluate_cases"))
  return dict(zip([c[0] for c in EVALUATE_ERRORS], results))


@pytest.mark.parametrize("case,expected", [(c[0], c[2]) for c in EVALUATE_ERRORS],
                         ids=[c[0] for c in EVALUATE_ERRORS])
def test_evaluate_errors(evaluate_errors, case, expected):
  _assert_usage_error(evaluate_errors[case], expected)


def test_evaluate_src_ref(run_dir, files):
  rc, out, err = _cli("evaluate.py", f"--workdir={run_dir}", f"--src={files}/src.txt",
                      f"--ref={files}/ref.txt")
  assert rc == 0, err[-3000:]
  result = json.loads(out.strip().splitlines()[-1])
  assert result["task"] == "dates" and result["split"] == "src.txt"
  assert result["examples"] == 2 and result["beam_size"] == 1 and result["step"] == 40
  output = Path(result["output"])
  assert output.parent == run_dir and output.is_file()
  hyps = output.read_text().splitlines()
  assert len(hyps) == 2
  refs = (files / "ref.txt").read_text().splitlines()
  assert result["exact_match"] == 100.0 * sum(h == r for h, r in zip(hyps, refs)) / 2


TRANSLATE_ERRORS = [
    ("workdir_without_checkpoint", ["--workdir={d}/empty_dir"], "no checkpoint found"),
    ("workdir_is_file", ["--workdir={d}/a_file"], "is a file"),
    ("beam_size_0", ["--workdir={run}", "--beam_size=0"], "--beam_size must be an integer >= 1"),
    ("negative_alpha", ["--workdir={run}", "--beam_size=2", "--alpha=-1"],
     "--alpha must be >= 0"),
    ("unknown_flag", ["--workdir={run}", "--no_such_flag"], "Unknown command line flag"),
    ("n_best_above_beam", ["--workdir={run}", "--beam_size=2", "--n_best=3"],
     "--n_best must be between 1 and --beam_size (2)"),
    ("unknown_dtype", ["--workdir={run}", "--dtype=float8"], "dtype"),
]


@pytest.fixture(scope="module")
def translate_errors(run_dir, files, tmp_path_factory):
  cases = [[a.format(run=run_dir, d=files) for a in c[1]] + ["3 march 1998"]
           for c in TRANSLATE_ERRORS]
  results = _cli_cases("translate", cases, tmp_path_factory.mktemp("translate_cases"))
  return dict(zip([c[0] for c in TRANSLATE_ERRORS], results))


@pytest.mark.parametrize("case,expected", [(c[0], c[2]) for c in TRANSLATE_ERRORS],
                         ids=[c[0] for c in TRANSLATE_ERRORS])
def test_translate_errors(translate_errors, case, expected):
  _assert_usage_error(translate_errors[case], expected)


def test_translate_non_utf8_stdin(run_dir):
  result = _cli("translate.py", f"--workdir={run_dir}", stdin=b"ok\n\xff\xfe bad\nnever read\n")
  line = _assert_usage_error(result, "stdin line 2")
  assert line == "error: stdin line 2 is not UTF-8"
  assert len(result[1].splitlines()) <= 1  # line 1 may already have been answered


def test_translate_stdin(run_dir, tmp_path):
  png = tmp_path / "attention.png"
  rc, out, err = _cli("translate.py", f"--workdir={run_dir}", f"--plot={png}",
                      stdin="3 march 1998\ntuesday, 1 may 2001\n".encode())
  assert rc == 0, err[-3000:]
  assert len(out.split("\n")) == 3 and out.endswith("\n")  # one line per input line
  assert png.is_file()


def _batch_sizes(err: str) -> list[int]:
  return [int(line.split("a batch of ")[1].split()[0])
          for line in err.splitlines() if "translating a batch of" in line]


def test_translate_batches_the_lines_already_waiting(run_dir):
  # All 6 lines sit in the pipe before the CLI (a few seconds to start) reads.
  stdin = "".join(f"{d} march 19{90 + d}\n" for d in range(1, 7)).encode()
  rc, out, err = _cli("translate.py", f"--workdir={run_dir}", "--batch_size=4",
                      "--verbosity=0", stdin=stdin)
  assert rc == 0, err[-3000:]
  assert len(out.splitlines()) == 6
  assert _batch_sizes(err) == [4, 2]


def test_translate_answers_a_line_that_arrives_alone_at_once(run_dir):
  p = subprocess.Popen([sys.executable, str(REPO / "experiments/translate.py"),
                        f"--workdir={run_dir}", "--verbosity=0"], env=ENV,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    answers = []
    for line in (b"3 march 1998\n", b"tuesday, 1 may 2001\n"):
      p.stdin.write(line)
      p.stdin.flush()
      # The answer comes while stdin is still open (nothing else is waiting).
      assert select.select([p.stdout], [], [], TIMEOUT)[0], "no answer while stdin stays open"
      answers.append(p.stdout.readline())
    rest, err = p.communicate(timeout=TIMEOUT)
  finally:
    p.kill()
  assert all(a.endswith(b"\n") for a in answers) and rest == b""
  assert p.returncode == 0 and _batch_sizes(err.decode()) == [1, 1]


def test_translate_n_best_with_scores(run_dir):
  rc, out, err = _cli("translate.py", f"--workdir={run_dir}", "--beam_size=3", "--n_best=2",
                      "--scores", stdin=b"3 march 1998\n\ntuesday, 1 may 2001\n")
  assert rc == 0, err[-3000:]
  rows = [line.split("\t") for line in out.splitlines()]
  assert [r[0] for r in rows] == ["0", "0", "1", "1", "2", "2"]
  assert all(len(r) == 3 for r in rows)
  for first, second in (rows[0:2], rows[4:6]):
    assert float(first[1]) >= float(second[1]) and first[2] != second[2]
  assert rows[2][1:] == rows[3][1:] == ["", ""]   # the empty line: no score, no output
  rc, plain, _ = _cli("translate.py", f"--workdir={run_dir}", "--beam_size=3",
                      stdin=b"3 march 1998\n")
  assert plain.strip() == rows[0][2]      # the 1-best is what plain beam search prints
  rc, no_scores, _ = _cli("translate.py", f"--workdir={run_dir}", "--beam_size=3", "--n_best=2",
                          "3 march 1998")
  assert [line.split("\t") for line in no_scores.splitlines()] == [r[::2] for r in rows[:2]]


def test_evaluate_and_translate_print_only_their_answers(run_dir):
  """A fresh process loading a checkpoint prints no library notices (Orbax's
  read-only messages are dropped), only the answer."""
  rc, out, err = _cli("evaluate.py", f"--workdir={run_dir}", "--split=val")
  assert rc == 0 and err == "", err[-3000:]
  assert list(json.loads(out))[:2] == ["task", "split"] and len(out.splitlines()) == 1
  rc, out, err = _cli("translate.py", f"--workdir={run_dir}", stdin=b"3 march 1998\n")
  assert rc == 0 and err == "", err[-3000:]
  assert len(out.splitlines()) == 1  # (the tiny model may answer with an empty line)


def test_evaluate_bfloat16_keeps_the_float32_output(run_dir):
  """The bfloat16 system output goes to its own file: comparing the two dtypes
  never overwrites the float32 hypotheses."""
  outs = {}
  for dtype in ("float32", "bfloat16"):
    rc, out, err = _cli("evaluate.py", f"--workdir={run_dir}", "--split=val", f"--dtype={dtype}")
    assert rc == 0, err[-3000:]
    outs[dtype] = json.loads(out)["output"]
  assert outs == {"float32": str(run_dir / "val.beam1.hyp.txt"),
                  "bfloat16": str(run_dir / "val.beam1.bfloat16.hyp.txt")}
  assert all(Path(p).stat().st_size > 0 for p in outs.values())


def test_evaluate_beam_outputs_are_named_by_alpha(run_dir):
  """Choosing the length penalty on val means several beam runs: each alpha
  keeps its own system output, and the JSON line says which alpha it used."""
  outs = {}
  for alpha in ("0.6", "1"):
    rc, out, err = _cli("evaluate.py", f"--workdir={run_dir}", "--split=val", "--beam_size=2",
                        f"--alpha={alpha}")
    assert rc == 0, err[-3000:]
    line = json.loads(out)
    assert line["alpha"] == float(alpha)
    outs[alpha] = line["output"]
  assert outs == {"0.6": str(run_dir / "val.beam2.alpha0.6.hyp.txt"),
                  "1": str(run_dir / "val.beam2.alpha1.hyp.txt")}


def test_evaluate_perplexities_equal_the_training_runs_final_evaluation(run_dir):
  """evaluate.py reports the split's teacher-forced and free-running
  perplexity, the figures the training run's final evaluation logged for the
  same checkpoint (the tutorial's test PPL is the free-running one)."""
  rc, out, err = _cli("evaluate.py", f"--workdir={run_dir}", "--split=test")
  assert rc == 0, err[-3000:]
  line = json.loads(out)
  rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in rows if r.get("split") == "test" and r.get("final")][-1]
  assert line["step"] == final["step"]
  assert line["free_running_ppl"] > line["ppl"] > 1.0
  assert line["ppl"] == pytest.approx(final["ppl"], rel=1e-6)
  assert line["free_running_ppl"] == pytest.approx(final["free_running_ppl"], rel=1e-6)
  assert line["free_running_ppl_tutorial"] == pytest.approx(final["free_running_ppl_tutorial"],
                                                            rel=1e-6)


def test_real_warnings_still_show(run_dir):
  """Only Orbax's read-only notices are dropped: a truncated input still warns."""
  rc, out, err = _cli("translate.py", f"--workdir={run_dir}", stdin=("1 " * 500 + "\n").encode())
  assert rc == 0 and "were truncated" in err and len(out.splitlines()) == 1


def test_evaluate_progress_bar_on_a_terminal_only(run_dir):
  """stderr on a pseudo-terminal gets a progress bar; a pipe (above) none."""
  import fcntl
  import pty
  import struct
  import termios
  primary, secondary = pty.openpty()
  fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
  p = subprocess.Popen([sys.executable, str(REPO / "experiments/evaluate.py"),
                        f"--workdir={run_dir}", "--split=val", "--beam_size=2"],
                       env=ENV, stdout=subprocess.PIPE, stderr=secondary)
  os.close(secondary)
  chunks = []
  while True:
    try:
      data = os.read(primary, 4096)
    except OSError:  # EIO: the child closed its end
      break
    if not data:
      break
    chunks.append(data)
  out, _ = p.communicate(timeout=TIMEOUT)
  os.close(primary)
  assert p.returncode == 0
  tty = b"".join(chunks).decode("utf-8", "replace")
  assert "decoding (beam 2)" in tty and "batch" in tty
  assert json.loads(out)["beam_size"] == 2


TRAIN_USAGE_ERRORS = [
    ("no_arguments", [], "--config and --workdir are required"),
    ("missing_config_file", ["--config={repo}/experiments/configs/nope.py", "--workdir={tmp}"],
     "No such file"),
    ("unknown_preset", ["--config={repo}/experiments/configs/dates.py:huge", "--workdir={tmp}"],
     "unknown preset 'huge'"),
    ("unknown_config_name", ["--config=dates_v2:tiny", "--workdir={tmp}"],
     "unknown config 'dates_v2'"),
    ("unknown_preset_by_name", ["--config", "dates:huge", "--workdir={tmp}"],
     "unknown preset 'huge'"),
    ("unknown_field", ["--config={repo}/experiments/configs/dates.py", "--workdir={tmp}",
                       "--config.no_such_field=1"], "no_such_field"),
    ("bad_value", ["--config={repo}/experiments/configs/dates.py", "--workdir={tmp}",
                   "--config.batch_size=abc"], "batch_size"),
]


@pytest.fixture(scope="module")
def train_usage_errors(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("train_cases")
  cases = [[a.format(repo=REPO, tmp=tmp / c[0] / "wd") for a in c[1]] for c in TRAIN_USAGE_ERRORS]
  return tmp, dict(zip([c[0] for c in TRAIN_USAGE_ERRORS], _cli_cases("train", cases, tmp)))


@pytest.mark.parametrize("case,expected", [(c[0], c[2]) for c in TRAIN_USAGE_ERRORS],
                         ids=[c[0] for c in TRAIN_USAGE_ERRORS])
def test_train_usage_errors_name_the_configs(train_usage_errors, case, expected):
  tmp, results = train_usage_errors
  rc, out, err = results[case]
  _assert_usage_error((rc, out, err), expected)
  usage = [x for x in err.splitlines() if x.startswith("usage:")]
  assert len(err.splitlines()) == 2 and len(usage) == 1, err
  for name in ("dates", "g2p", "multi30k", "multi30k_tutorial", "multi30k_en_de", "reverse",
               "sort"):
    assert name in usage[0]
  assert not (tmp / case / "wd").exists()  # nothing was started


def test_train_usage_error_in_a_process_of_its_own(tmp_path):
  """The contract itself, outside `_cli_cases`: exit code 2, one error line
  and the usage line."""
  rc, out, err = _cli("train.py", "--config=nope", f"--workdir={tmp_path / 'wd'}")
  _assert_usage_error((rc, out, err), "unknown config 'nope'")
  assert len(err.splitlines()) == 2 and err.splitlines()[1].startswith("usage:")


@pytest.mark.slow
def test_the_configs_decode_group_is_every_clis_default(tmp_path):
  """A run trained with `decode.beam_size=2, decode.alpha=1.0`: its final
  evaluation decodes so, and evaluate.py / translate.py with no decoding
  flags decode the same way (the same output as the training run's final
  evaluation); a flag overrides one field."""
  p = subprocess.run([sys.executable, str(REPO / "experiments/train.py"),
                      f"--config={REPO / 'experiments/configs/dates.py'}:tiny",
                      f"--workdir={tmp_path}", "--config.decode.beam_size=2",
                      "--config.decode.alpha=1.0"],
                     env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
  assert p.returncode == 0, p.stderr[-3000:]
  trained = json.loads(p.stdout.strip().splitlines()[-1])["test"]
  rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in rows if r.get("split") == "test" and r.get("final")][-1]
  assert final["decode"] == {"beam_size": 2, "alpha": 1.0, "max_len_ratio": 1.5,
                             "max_len_offset": 10}
  rc, out, err = _cli("evaluate.py", f"--workdir={tmp_path}", "--split=test")
  assert rc == 0, err[-3000:]
  line = json.loads(out)
  assert (line["beam_size"], line["alpha"]) == (2, 1.0)
  assert line["exact_match"] == trained["exact_match"]
  assert Path(line["output"]) == tmp_path / "test.beam2.alpha1.hyp.txt"
  assert Path(line["output"]).read_text() == (tmp_path / "test.hyp.txt").read_text()
  rc, out, err = _cli("evaluate.py", f"--workdir={tmp_path}", "--split=test", "--beam_size=1")
  assert rc == 0 and json.loads(out)["beam_size"] == 1 and json.loads(out)["alpha"] is None
  # translate.py: n_best 2 needs a beam of 2, which only the config gives here.
  rc, out, err = _cli("translate.py", f"--workdir={tmp_path}", "--n_best=2", "3 march 1998")
  assert rc == 0, err[-3000:]
  assert [r.split("\t")[0] for r in out.splitlines()] == ["0", "0"]
  _assert_usage_error(_cli("translate.py", f"--workdir={tmp_path}", "--n_best=3",
                           "3 march 1998"), "--n_best must be between 1 and --beam_size (2")


def test_every_tool_answers_a_missing_workdir_in_one_line(tmp_path):
  """The fast tier's check of evaluate, translate and export (no trained run
  needed): each names the missing folder, exit code 2."""
  missing = tmp_path / "does_not_exist"
  cases = {"evaluate": [f"--workdir={missing}"], "translate": [f"--workdir={missing}", "x"],
           "export": [f"--workdir={missing}", f"--out={tmp_path / 'out'}"]}
  for tool, args in cases.items():
    (result,) = _cli_cases(tool, [args], tmp_path)
    line = _assert_usage_error(result, str(missing))
    assert "no such checkpoint or workdir" in line, (tool, line)
  assert not (tmp_path / "out").exists()
