"""Tokenizer files and text files that are damaged, hostile or named outside ASCII: each is refused at build time (or
read) naming the file and what is wrong, never an internal error (exit 70) nor a build that bertc run then calls
damaged."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertc.errors import CalibrationError, InputError, WeightsError
from bertc.text import bundle_tokenizer, load_tokenizer, read_texts

HF = Path(__file__).resolve().parent / "fixtures" / "hf"
BERT = HF / "bert_model"   # tokenizer.json, tokenizer_config.json, vocab.txt


def _checkpoint(tmp_path: Path, name: str = "ck") -> Path:
    directory = tmp_path / name
    shutil.copytree(BERT, directory)
    return directory


@pytest.mark.parametrize("content, said", [(b"", "is empty"), (b"\xff\xfe\x00garbage", "not UTF-8"),
                                           (b'{"version": "1.0"', "not JSON"), (b"[1, 2]", "JSON list"),
                                           (b"{}", "tokenizers library")])
def test_a_damaged_tokenizer_json_is_refused_at_build_naming_it(tmp_path, content, said):
    ck = _checkpoint(tmp_path)
    (ck / "tokenizer.json").write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WeightsError, match=said) as caught:
        bundle_tokenizer(ck, out)
    assert str(ck / "tokenizer.json") in str(caught.value) and caught.value.exit_code == 2
    assert not list(out.iterdir())   # nothing copied


def test_a_damaged_tokenizer_json_in_a_build_is_a_damaged_build_not_an_internal_error(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(BERT, out)
    (out / "tokenizer.json").write_bytes(b"")
    with pytest.raises(InputError, match="not a readable bertc build .*tokenizer.json.*rebuild it"):
        load_tokenizer(out, 8)


@pytest.mark.parametrize("name, content, said", [
    ("tokenizer_config.json", b"\x00\x01garbage", "not JSON"),
    ("special_tokens_map.json", b"", "is empty"),
    ("vocab.txt", b"[PAD]\n\xff\xfe\n", "not UTF-8"),
    ("vocab.txt", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab12\nsize 231508\n", "Git LFS pointer")])
def test_a_damaged_side_file_is_refused_at_build_naming_it(tmp_path, name, content, said):
    ck = _checkpoint(tmp_path)
    (ck / name).write_bytes(content)
    with pytest.raises(WeightsError, match=said) as caught:
        bundle_tokenizer(ck, tmp_path)
    assert str(ck / name) in str(caught.value)


def test_every_committed_fixtures_tokenizer_passes_the_check():
    from bertc.text import check_tokenizer

    checked = [d.name for d in sorted(HF.iterdir()) if check_tokenizer(d) is not None]
    assert len(checked) >= 15, checked


def test_a_side_file_linked_to_what_is_no_tokenizer_file_is_refused_not_copied(tmp_path):
    """A link to /etc/passwd as special_tokens_map.json was copied into OUT: refused (a link to a file that is no
    tokenizer file of that name)."""
    elsewhere = tmp_path / "passwd"
    elsewhere.write_text("root:x:0:0:root:/root:/bin/bash\n")
    ck = _checkpoint(tmp_path)
    (ck / "special_tokens_map.json").symlink_to(elsewhere)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(WeightsError, match="special_tokens_map.json: the tokenizer file is a link to .*passwd"):
        bundle_tokenizer(ck, out)
    assert not list(out.iterdir())


def test_tokenizer_files_linked_from_elsewhere_are_followed(tmp_path):
    """The review of the first version of the check: links out of the checkpoint were refused, though people make
    them: huggingface_hub's ``snapshot_download(local_dir=..., local_dir_use_symlinks=True)`` links each file into
    ~/.cache/huggingface/hub/models--*/blobs/ by absolute path, a fine-tuned model shares its base model's tokenizer
    (``ft/tokenizer.json -> ../base/tokenizer.json``). A link is followed; its target is checked as any file."""
    base = tmp_path / "base"
    shutil.copytree(BERT, base)
    ck = _checkpoint(tmp_path / "ft")
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        (ck / name).unlink(missing_ok=True)
        (ck / name).symlink_to(Path("..", "..", "base", name) if name == "tokenizer.json" else base / name)
    out = tmp_path / "out"
    out.mkdir()
    section = bundle_tokenizer(ck, out)
    assert {"tokenizer.json", "vocab.txt"} <= set(section["files"]) and not (out / "tokenizer.json").is_symlink()
    load_tokenizer(out, 8)
    # a link to a file that is no tokenizer file of its name (the second review: merges.txt -> a private key, any
    # UTF-8 text passing as merges) is refused, and nothing is copied
    key = tmp_path / "home" / ".ssh" / "id_ed25519"
    key.parent.mkdir(parents=True)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")
    (ck / "merges.txt").symlink_to(key)
    copy = tmp_path / "out2"
    copy.mkdir()
    with pytest.raises(WeightsError, match="merges.txt: the tokenizer file is a link to .*id_ed25519, which is no"):
        bundle_tokenizer(ck, copy)
    assert not list(copy.iterdir())


def test_the_hub_cache_layout_of_links_into_blobs_is_bundled(tmp_path):
    """models--org--name/snapshots/<rev>/tokenizer.json -> ../../blobs/<hash>: the files a download links to."""
    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for n, path in enumerate(sorted(BERT.iterdir())):
        blob = repo / "blobs" / f"blob{n}"
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob.name))
    out = tmp_path / "out"
    out.mkdir()
    section = bundle_tokenizer(snapshot, out)
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(section["files"])
    assert not (out / "tokenizer.json").is_symlink()
    load_tokenizer(out, 8)


def test_a_text_file_that_never_ends_is_refused_at_the_line_cap(tmp_path):
    with pytest.raises(InputError, match="a line longer than 1 MiB"):
        read_texts(Path("/dev/zero"))


def test_a_text_file_over_the_size_cap_is_refused_naming_it(tmp_path, monkeypatch):
    import bertc.text

    monkeypatch.setattr(bertc.text, "MAX_TEXT_FILE_BYTES", 3 << 20)
    big = tmp_path / "big.txt"
    big.write_bytes(b"hello world\n" * 400_000)   # 4.8 MB, lines of 12 bytes
    with pytest.raises(InputError, match="big.txt: the text file is larger than 3 MiB"):
        read_texts(big)
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello world\r\nthe cat\tsat\n")
    assert read_texts(small) == ["hello world", ("the cat", "sat")]


def test_calibration_from_a_device_is_refused_as_not_a_regular_file(tmp_path):
    from bertc.calibration import real_text_cases

    with pytest.raises(CalibrationError, match="/dev/zero: not a regular file"):
        real_text_cases(None, tmp_path, Path("/dev/zero"))


# the C locale without UTF-8 mode: Python's file system encoding is ascii, non-ASCII file names are surrogates
C_LOCALE = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
C_LOCALE.pop("LANG", None)
C_LOCALE.pop("LANGUAGE", None)


def _in_c_locale(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=C_LOCALE, capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _c_locale_folders(tmp_path: Path) -> None:
    shutil.copytree(BERT, tmp_path / "st \u00e9")
    wordpiece = tmp_path / "wp \u00e9"
    wordpiece.mkdir()
    shutil.copyfile(BERT / "vocab.txt", wordpiece / "vocab.txt")
    (wordpiece / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')


C_LOCALE_HEAD = """
import os, sys
from pathlib import Path
assert sys.getfilesystemencoding() == "ascii", sys.getfilesystemencoding()
base = os.fsdecode({base!r})
"""


def test_a_build_named_outside_ascii_loads_its_tokenizer_under_the_c_locale(tmp_path):
    """tokenizer.json and vocab.txt in a folder named 'st é' / 'wp é': the tokenizers library takes no such path."""
    _c_locale_folders(tmp_path)
    out = _in_c_locale(C_LOCALE_HEAD.format(base=os.fsencode(tmp_path)) + """
from bertc.text import load_tokenizer
for name in ("st \\u00e9", "wp \\u00e9"):
    print(load_tokenizer(Path(base) / os.fsdecode(name.encode()), 8).encode("hello world").ids)
""")
    assert len(out.splitlines()) == 2 and len(set(out.splitlines())) == 1, out


def test_a_spec_weights_entry_outside_ascii_resolves_under_the_c_locale(tmp_path):
    """The spec's UTF-8 'st é' is the folder the locale names with surrogates; an entry written there is UTF-8."""
    _c_locale_folders(tmp_path)
    out = _in_c_locale(C_LOCALE_HEAD.format(base=os.fsencode(tmp_path)) + """
from bertc.weights import resolve_weights_path, relative_entry
found = resolve_weights_path("st \\u00e9", Path(base) / "spec.json")
assert found.is_dir(), found
print(ascii(relative_entry(found, Path(base))))
""")
    assert out.strip() == "'st \\xe9'", out


def test_the_spec_hash_takes_a_path_the_locale_could_not_decode():
    from bertc.manifest import canonical_spec_json

    assert canonical_spec_json({"weights": "ckpt \udcc3\udca9"}) != canonical_spec_json({"weights": "ckpt"})


def test_bertc_import_refuses_a_damaged_tokenizer_file_too(tmp_path, capsys):
    """The build refused it; ``bertc import`` wrote the spec, exit 0, and the user learned of it one step later."""
    from bertc.cli import main

    ck = _checkpoint(tmp_path)
    (ck / "tokenizer.json").write_bytes(b"")
    assert main(["import", str(ck), "-o", str(tmp_path / "spec.json")]) == 2
    assert "tokenizer.json: the tokenizer file is empty" in capsys.readouterr().err
    assert not (tmp_path / "spec.json").exists()
