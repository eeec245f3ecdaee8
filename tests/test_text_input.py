"""lines: UTF-8 files and streamed stdin batches with line numbers."""

import os
import threading
import time

import pytest

from flax_attn import text_input


def _pipe_with(data: bytes):
  r, w = os.pipe()
  os.write(w, data)
  os.close(w)
  return r


def test_waiting_lines_come_as_one_batch_and_the_last_needs_no_newline():
  fd = _pipe_with(b"a\nb b\n\nlast")
  assert list(text_input.stream_batches(fd, max_lines=64)) == [["a", "b b", "", "last"]]


def test_batches_hold_at_most_max_lines():
  fd = _pipe_with(b"".join(b"%d\n" % i for i in range(7)))
  assert [len(b) for b in text_input.stream_batches(fd, max_lines=3)] == [3, 3, 1]


def test_a_line_that_arrives_alone_is_yielded_before_the_next_is_written():
  r, w = os.pipe()
  batches = text_input.stream_batches(r, max_lines=64)
  os.write(w, b"first\n")
  assert next(batches) == ["first"]     # would block forever if it waited for more
  writer = threading.Thread(target=lambda: (time.sleep(0.2), os.write(w, b"second\n"),
                                            os.close(w)))
  writer.start()
  assert next(batches) == ["second"]
  writer.join()
  assert list(batches) == []


def test_non_utf8_line_is_named_after_the_lines_before_it():
  fd = _pipe_with(b"ok\nfine\n\xff\xfe bad\nnever\n")
  batches = text_input.stream_batches(fd, max_lines=64)
  assert next(batches) == ["ok", "fine"]
  with pytest.raises(text_input.BadInput, match=r"^stdin line 3 is not UTF-8$"):
    next(batches)


def test_non_utf8_line_number_counts_earlier_batches():
  fd = _pipe_with(b"1\n2\n3\n\xff\n")
  batches = text_input.stream_batches(fd, max_lines=2)
  assert next(batches) == ["1", "2"] and next(batches) == ["3"]
  with pytest.raises(text_input.BadInput, match="stdin line 4 "):
    next(batches)


def test_read_lines(tmp_path):
  (tmp_path / "ok.txt").write_bytes("Grüße\n\nzwei\n".encode())
  assert text_input.read_lines(str(tmp_path / "ok.txt"), "source") == ["Grüße", "", "zwei"]
  (tmp_path / "bad.txt").write_bytes(b"fine\nalso fine\n\xff\n")
  (tmp_path / "empty.txt").write_bytes(b"")
  cases = [("bad.txt", r"source file .*bad.txt is not UTF-8 \(line 3\)"),
           ("empty.txt", "is empty"), ("missing.txt", "does not exist"), ("", "is not a file")]
  for name, message in cases:
    with pytest.raises(text_input.BadInput, match=message):
      text_input.read_lines(str(tmp_path / name) if name else str(tmp_path), "source")
