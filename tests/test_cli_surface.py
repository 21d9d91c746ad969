"""The command line's surface, one rule for every command (QA report U): the long forms of -o, --force and missing
folders of an output file, status lines on stderr, -q, --plugin, the flags named in messages, and the nits."""
import json
import shutil
from pathlib import Path

import pytest

from bertc.cli import cli, main
from bertc.errors import EXIT_BAD_SPEC, EXIT_OUTPUT
from conftest import tiny_bert
from test_run import shared_builds  # noqa: E402

HF = Path(__file__).resolve().parent / "fixtures" / "hf"


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    """A sentence embedder's build, shared with test_run (read only here; copy it to write into it)."""
    return shared_builds(tmp_path_factory, ("st_bert_mean_norm",))["st_bert_mean_norm"]


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("the cat sat\na dog ran\n")
    return path


def _err_only(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    return captured.err


# --- U2: -o's long form is --out and --output on every command --------------------------------------------------

def test_every_o_option_takes_both_long_forms_the_old_one_shown_first(tmp_path, st, texts, capsys):
    for command, first in (("build", "--out"), ("import", "--output"), ("run", "--output"), ("schema", "--output")):
        option = next(p for p in cli.commands[command].params if "-o" in p.opts)
        other = "--output" if first == "--out" else "--out"
        assert option.opts[:2] == ["-o", first] and other in option.opts, (command, option.opts)
    ctx = cli.commands["build"].make_context("build", ["spec.json", "--output", str(tmp_path / "o")])
    assert ctx.params["out"] == tmp_path / "o"
    assert main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert main(["import", str(HF / "bert_seq_cls"), "--out", str(tmp_path / "i.json"), "-q"]) == 0
    assert main(["run", str(st), str(texts), "--out", str(tmp_path / "r.npy"), "-q"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "bertc spec"
    assert (tmp_path / "i.json").is_file() and (tmp_path / "r.npy").is_file()


# --- U3, U14, U9: inspect --plot -----------------------------------------------------------------------------------

def test_inspect_plot_refuses_an_existing_file_unless_forced(tmp_spec, tmp_path, capsys):   # U3
    spec = str(tmp_spec(tiny_bert()))
    notes = tmp_path / "notes.dot"
    notes.write_text("my notes")
    assert main(["inspect", spec, "--plot", str(notes)]) == EXIT_OUTPUT
    assert f"error: --plot {notes}: already exists; pass --force to replace it" in _err_only(capsys)
    assert notes.read_text() == "my notes"
    assert main(["inspect", spec, "--plot", str(notes), "--force"]) == 0
    assert notes.read_text().startswith("digraph")
    capsys.readouterr()
    assert main(["inspect", spec, "--force"]) == EXIT_BAD_SPEC   # --force without --plot: nothing to replace
    assert "error: --force replaces an existing --plot FILE" in capsys.readouterr().err


def test_inspect_plot_path_is_checked_before_any_output(tmp_spec, tmp_path, capsys):   # U14
    spec = str(tmp_spec(tiny_bert()))
    assert main(["inspect", spec, "--plot", str(tmp_path / "g.json")]) == EXIT_BAD_SPEC
    assert "unknown format '.json'" in _err_only(capsys)
    (tmp_path / "afile").write_text("x")
    assert main(["inspect", spec, "--plot", str(tmp_path / "afile" / "g.dot")]) == EXIT_OUTPUT
    assert "afile is not a directory (a file of that name is there)" in _err_only(capsys)


def test_status_lines_go_to_stderr(tmp_spec, tmp_path, capsys):   # U9
    plot = tmp_path / "g.dot"
    assert main(["inspect", str(tmp_spec(tiny_bert())), "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    assert captured.out.rstrip().splitlines()[-1].startswith("total parameters:")   # the table alone
    assert captured.err.strip() == f"wrote {plot}"
    schema = tmp_path / "schema.json"
    assert main(["schema", "-o", str(schema)]) == 0
    assert _err_only(capsys).strip() == f"wrote {schema}"
    spec = tmp_path / "seq.json"
    assert main(["import", str(HF / "bert_seq_cls"), "-o", str(spec)]) == 0
    lines = _err_only(capsys).splitlines()
    assert lines[0].startswith(f"wrote {spec}: bert_seq_cls (bert encoder, classifier head)")
    assert lines[1].startswith("  Imported from Hugging Face BertForSequenceClassification")


# --- U4: one rule for missing folders: made, and none left by a command that fails --------------------------------

def test_missing_folders_of_an_output_file_are_made_and_a_failure_leaves_none(tmp_spec, tmp_path, st, texts,
                                                                               capsys):
    target = tmp_path / "x" / "y" / "schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert json.loads(target.read_text())["title"] == "bertc spec"
    assert main(["inspect", str(tmp_spec(tiny_bert())), "--plot", str(tmp_path / "a" / "b" / "g.dot")]) == 0
    assert (tmp_path / "a" / "b" / "g.dot").is_file()
    bad = tmp_spec({**tiny_bert(), "seed": -1}, "bad.json")
    assert main(["inspect", str(bad), "--plot", str(tmp_path / "c" / "d" / "g.dot")]) == EXIT_BAD_SPEC
    assert not (tmp_path / "c").exists()
    result = tmp_path / "new" / "sub" / "r.npy"
    assert main(["run", str(st), str(texts), "-o", str(result), "-q"]) == 0
    assert result.is_file()
    capsys.readouterr()
    assert main(["run", str(st), str(tmp_path / "absent.txt"), "-o", str(tmp_path / "gone" / "sub" / "r.npy"),
                 "-q"]) == EXIT_BAD_SPEC
    assert "absent.txt: no such input file" in capsys.readouterr().err
    assert main(["run", str(st), str(texts), "-o", str(tmp_path / "gone" / "r.csv"), "-q", "--keep-fields", "id"]) \
        == EXIT_BAD_SPEC   # refused by run's own checks, once the folder was made
    assert not (tmp_path / "gone").exists()


# --- U6: -q on parity, bench and import ---------------------------------------------------------------------------

def test_quiet_parity_bench_and_import_print_errors_only(tmp_path, st, capsys):
    out = tmp_path / "out"
    shutil.copytree(st, out)
    assert main(["parity", str(out), "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["parity", str(out), "-q", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["passed"] is True and captured.err == ""
    bench = ["bench", str(out), "--rounds", "1", "--calls", "1", "--warmup", "0", "--no-plot", "--backends", "onnx_cpu",
             "-q"]
    assert main(bench) == 0
    assert capsys.readouterr() == ("", "") and (out / "bench.json").is_file()
    assert main([*bench, "--json"]) == 0
    captured = capsys.readouterr()
    assert "results" in json.loads(captured.out) and captured.err == ""
    assert main(["import", str(HF / "bert_seq_cls"), "-o", str(tmp_path / "s.json"), "-q"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["import", str(HF / "bert_seq_cls"), "-o", "-", "-q"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["name"] == "bert_seq_cls" and captured.err == ""


# --- U10, U11: import's --plugin, the missing tokenizer -----------------------------------------------------------

def test_import_takes_plugin(tmp_path, capsys):   # U10
    broken = tmp_path / "boom.py"
    broken.write_text("raise RuntimeError('boom')\n")
    assert main(["import", str(HF / "bert_seq_cls"), "-o", "-", "--plugin", str(broken)]) == EXIT_BAD_SPEC
    assert f"error: plugin {broken} failed to import: RuntimeError: boom" in capsys.readouterr().err


def test_import_notes_a_checkpoint_without_a_tokenizer(tmp_path, capsys):   # U11
    assert main(["import", str(HF / "bert_seq_cls"), "-o", str(tmp_path / "seq.json")]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"note: {HF / 'bert_seq_cls'} has no tokenizer (tokenizer.json, vocab.txt, vocab.json + merges.txt or a "
        "SentencePiece model): `bertc run` (bertc.Runtime), `bertc parity --text` and `--calibration` will need "
        "one; put the checkpoint's tokenizer files beside its weights and import again")
    assert main(["import", str(HF / "bert_seq_cls"), "-o", "-"]) == 0
    assert "has no tokenizer" in capsys.readouterr().err
    assert main(["import", str(HF / "bert_cross_encoder"), "-o", str(tmp_path / "ce.json")]) == 0
    assert "no tokenizer" not in capsys.readouterr().err   # it has one


# --- U12: validate's errors -----------------------------------------------------------------------------------------

def test_validate_errors_start_with_error(tmp_spec, tmp_path, capsys):
    bad = tmp_spec({**tiny_bert(), "seed": -1}, "bad.json")
    assert main(["validate", str(tmp_path / "nope.json"), str(bad)]) == EXIT_BAD_SPEC
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(" ")]
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), lines


# --- U7, U8: bertc run's options ----------------------------------------------------------------------------------

def test_run_actors_without_ray_is_refused(st, texts, capsys):   # U7
    assert main(["run", str(st), str(texts), "-o", "-", "-q", "--actors", "2"]) == EXIT_BAD_SPEC
    assert _err_only(capsys).startswith("error: --actors 2: only with --ray")


def test_run_messages_name_the_flags_typed(tmp_path, st, texts, capsys):   # U8
    base = ["run", str(st), str(texts), "-o", "-", "-q"]
    for args, message in (
            (["--max-length", "1000"], "error: --max-length 1000: at most the model's maximum of 16 tokens"),
            (["--doc-stride", "2"], "error: --doc-stride 2: only a span labeler or a token classifier"),
            (["--top-k", "3"], "error: --top-k 3: only a masked-LM model's predictions"),
            (["--aggregation", "max"], "error: --aggregation 'max': only a token classifier's words"),
            (["--allow-no-answer"], "error: --allow-no-answer: only a span labeler answers"),
            (["--scores", "raw"], "error: --scores 'raw': only a classifier's scores"),
            (["--threads", "100000"], "error: --threads 100000: more than"),
            (["--calibration-embeddings", str(tmp_path / "e.npy")],
             "error: --calibration-embeddings: only int8 and uint8 embeddings")):
        assert main([*base, *args]) == EXIT_BAD_SPEC, args
        assert _err_only(capsys).startswith(message), args


def test_flags_are_named_only_where_typed():   # U8: the leading name alone, and only a flag given
    from bertc.cli import _flags_named
    from bertc.errors import InputError

    def said(message, given):
        with pytest.raises(InputError) as caught, _flags_named(given):
            raise InputError(message)
        return str(caught.value)

    assert said("similarity: compares ...", {"similarity"}) == "--similarity: compares ..."
    assert said("rank and similarity: either", {"rank", "similarity"}) == "--rank and --similarity: either"
    assert said("scores 'softmax': the softmax of one score", {"rank"}) == "scores 'softmax': the softmax of one score"
    assert said("top_kx 3: ...", {"top_k"}) == "top_kx 3: ..."
    assert said("calibration embeddings (e.npy) have 5 dimensions", {"calibration embeddings"}) == \
        "calibration embeddings (e.npy) have 5 dimensions"   # a noun there, not the option's label


# --- U16: nits ------------------------------------------------------------------------------------------------------

def test_run_device_has_a_help_text():
    device = next(p for p in cli.commands["run"].params if p.name == "device")
    assert device.help and "cuda" in device.help


def test_schema_force_without_a_file_is_refused(capsys):
    for args in (["schema", "--force"], ["schema", "-o", "-", "--force"]):
        assert main(args) == EXIT_BAD_SPEC
        assert "error: --force replaces an existing -o FILE" in _err_only(capsys)


def test_bench_quotes_an_empty_baseline(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--baseline", ""]) == EXIT_BAD_SPEC
    assert "'' is no backend's name" in capsys.readouterr().err


def test_run_refuses_empty_keep_fields(st, tmp_path, capsys):
    rows = tmp_path / "one.jsonl"
    rows.write_text('{"text": "a cat", "id": 1}\n')
    assert main(["run", str(st), str(rows), "-o", "-", "-q", "--keep-fields", ""]) == EXIT_BAD_SPEC
    assert _err_only(capsys).startswith("error: --keep-fields '': one field, or several comma-separated, each once")


def test_run_says_a_directory_input_is_one_whatever_the_format(st, tmp_path, capsys):
    for fmt in ([], ["--input-format", "jsonl"]):
        assert main(["run", str(st), str(tmp_path), "-o", "-", "-q", *fmt]) == EXIT_BAD_SPEC
        assert f"error: {tmp_path}: is a directory, not an input file" in _err_only(capsys)


# --- a reviewer of the above ----------------------------------------------------------------------------------

def test_a_message_about_a_path_named_like_a_flag_is_left_as_it_is(tmp_path, texts, capsys):
    (tmp_path / "scores").mkdir()   # OUT named as a parameter whose flag is typed
    assert main(["run", str(tmp_path / "scores"), str(texts), "-o", str(tmp_path / "r.jsonl"), "--scores",
                 "sigmoid"]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'scores'}: not a bertc build directory" in err and "--scores:" not in err


@pytest.mark.parametrize("damage", ["spec.json", "tokenizer.json"])
def test_parity_and_bench_of_a_damaged_build_are_exit_5_as_run(st, tmp_path, texts, capsys, damage):
    """A damaged spec.json was a spec error (exit 2) from parity and bench; a damaged tokenizer.json let parity
    judge the random-id grid alone and pass (exit 0), as the build's verdict."""
    out = tmp_path / "out"
    shutil.copytree(st, out)
    (out / damage).write_text((out / damage).read_text()[:40])
    assert main(["parity", str(out)]) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert f"error: {out}: not a readable bertc build (" in err and "rebuild it, or restore the file" in err, err
    assert json.loads((out / "report.json").read_text()) == json.loads((st / "report.json").read_text())
    assert main(["run", str(out), str(texts), "-o", str(tmp_path / "r.jsonl")]) == EXIT_OUTPUT
    if damage == "spec.json":
        assert main(["bench", str(out), "--rounds", "1", "--calls", "1", "--warmup", "0", "--no-plot"]) == EXIT_OUTPUT
    capsys.readouterr()
