"""`flax_attn.manifest`: every file's sha256 and size; any change is named."""

import json

import pytest

from flax_attn import manifest


class Bad(ValueError):
  pass


@pytest.fixture
def folder(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.txt").write_text("alpha")
  (tmp_path / "sub" / "b.bin").write_bytes(b"\x00\x01")
  manifest.write(tmp_path)
  return tmp_path


def test_digest_lists_every_file_but_itself(folder):
  want = json.loads((folder / manifest.MANIFEST_FILE).read_text())
  assert sorted(want) == ["a.txt", "sub/b.bin"]
  assert want["a.txt"]["bytes"] == 5 and len(want["a.txt"]["sha256"]) == 64
  manifest.verify(folder, Bad)  # unchanged: no error


@pytest.mark.parametrize("change, expected", [
    (lambda d: (d / "a.txt").write_text("alphA"), "a.txt does not match its checksum"),
    (lambda d: (d / "sub" / "b.bin").unlink(), "b.bin is missing"),
    (lambda d: (d / "extra").write_text(""), "extra is not in the manifest"),
    (lambda d: (d / manifest.MANIFEST_FILE).write_text("{"), "MANIFEST.json cannot be read"),
])
def test_any_change_is_named(folder, change, expected):
  change(folder)
  with pytest.raises(Bad, match=expected):
    manifest.verify(folder, Bad)


@pytest.mark.parametrize("record, expected", [
    ({"format": "fmt", "format_version": 1}, None),
    ({"format": "other", "format_version": 1}, "is not a flax_attn thing \\(format 'other'\\)"),
    ({"format": "fmt", "format_version": 3}, "is thing format 3; this flax_attn reads up to 2"),
    ("{", "rec.json cannot be read"),
])
def test_read_record_checks_format_and_version(tmp_path, record, expected):
  (tmp_path / "rec.json").write_text(record if isinstance(record, str) else json.dumps(record))
  if expected is None:
    assert manifest.read_record(tmp_path, "rec.json", "fmt", 2, "thing", Bad) == record
  else:
    with pytest.raises(Bad, match=expected):
      manifest.read_record(tmp_path, "rec.json", "fmt", 2, "thing", Bad)
