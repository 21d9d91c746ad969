"""The spec language: strictness, JSON-path errors, round-trip, schema."""
import json
from pathlib import Path

import pytest

from bertc.errors import SpecError
from bertc.spec import dump_spec, json_schema, load_spec
from conftest import BENCHMARK_SPECS, SEED_SPECS, tiny_bert

ROOT = Path(__file__).resolve().parent.parent


def enc(**kw):
    d = tiny_bert()
    d["encoder"].update(kw)
    return d


def with_head(head):
    d = tiny_bert()
    d["head"] = head
    return d


def scaffold(**kw):
    d = tiny_bert()
    d["encoder"] = {"type": "scaffold", "hidden_size": 16, "num_layers": 2,
                    "embedding": {"type": "standard", "vocab_size": 50, "max_sequence_length": 8},
                    "hidden": {"type": "transformer", "num_attention_heads": 2, "intermediate_size": 32}}
    d["encoder"].update(kw)
    return d


MALFORMED = [
    (enc(num_attention_heads=3), "$.encoder.num_attention_heads", "hidden_size 16 is not divisible by num_attention_heads 3"),
    (enc(hidden_sizee=16), "$.encoder.hidden_sizee", "unknown key 'hidden_sizee' (did you mean 'hidden_size'?)"),
    # a key of another head type: not "did you mean" itself
    (with_head({"type": "classifier", "num_classes": 2, "num_token_predictions": 3}),
     "$.head.num_token_predictions", "unknown key 'num_token_predictions' for this component (other component types "
                                     "take it)"),
    # a suggestion is a key of this component: Model Garden's output_range was met by "did you mean 'output'?", a
    # key the bert encoder does not take (found by a tester)
    (enc(output_range=1), "$.encoder.output_range", "unknown key 'output_range' (did you mean 'dropout_rate'?)"),
    (scaffold(hidden={"type": "transformer", "num_attention_heads": 2, "intermediate_size": 32, "norm_frist": True}),
     "$.encoder.hidden.norm_frist", "unknown key 'norm_frist' (did you mean 'norm_first'?)"),
    (enc(vocab_size="100"), "$.encoder.vocab_size", "Input should be a valid integer"),
    (enc(vocab_size=0), "$.encoder.vocab_size", "a vocabulary needs at least 2 ids: id 0 is the padding id"),
    # vocab_size 1 validated, then a build crashed drawing real ids from 1 .. 0 (bertc.inputs)
    (enc(vocab_size=1), "$.encoder.vocab_size", "a vocabulary needs at least 2 ids"),
    (scaffold(embedding={"type": "custom", "vocab_size": 1, "max_sequence_length": 8}),
     "$.encoder.embedding.vocab_size", "a vocabulary needs at least 2 ids"),
    # ids are int32: 1e38 validated with absurd size previews
    (enc(vocab_size=10**38), "$.encoder.vocab_size", "exceeds 2,147,483,648 (2**31): ids are int32"),
    (enc(vocab_size=2**31 + 1), "$.encoder.vocab_size", "the largest id, vocab_size - 1, must be at most 2**31 - 1"),
    (enc(type_vocab_size=2**31 + 1), "$.encoder.type_vocab_size", "type ids are int32"),
    # an encoder whose own field does not check (modernbert's; a plug-in's) is held to the same bounds
    (tiny_bert(encoder={"type": "modernbert", "vocab_size": 1, "hidden_size": 16, "num_layers": 1,
                        "num_attention_heads": 2, "intermediate_size": 32, "max_sequence_length": 8}),
     "$.encoder.vocab_size", "a vocabulary needs at least 2 ids"),
    (enc(dropout_rate=1.5), "$.encoder.dropout_rate", "less than 1"),
    (enc(activation="swishy"), "$.encoder.activation", "Input should be 'gelu'"),
    (enc(num_layers=10**12), "$.encoder.num_layers", "less than or equal to 10000"),   # validate ran out of memory
    (enc(type="bertt"), "$.encoder", "unknown type 'bertt' (did you mean 'bert'?); known types: 'albert', 'bert', "),
    ({k: v for k, v in tiny_bert().items() if k != "encoder"}, "$.encoder", "required key is missing"),
    (with_head({"type": "pretrainer", "num_token_predictions": 9}), "$.head.num_token_predictions",
     "9 exceeds the encoder's max_sequence_length 8 (at $.encoder.max_sequence_length)"),
    (with_head({"type": "classifier"}), "$.head.num_classes", "required key is missing"),
    (with_head({"num_classes": 2}), "$.head", "missing 'type'"),
    (tiny_bert(name="has space"), "$.name", "should match pattern"),
    # validate crashed (IndexError) reading the first block's heads
    (scaffold(hidden=[]), "$.encoder.hidden", "is empty: give one block spec for every layer"),
    (scaffold(hidden=[{"type": "transformer", "num_attention_heads": 2, "intermediate_size": 32}] * 3),
     "$.encoder.hidden", "has 3 block specs but num_layers is 2"),
    (scaffold(hidden={"type": "scaffold", "attention": {"type": "talking_heads", "num_heads": 5},
                      "feedforward": {"type": "dense", "intermediate_size": 8}}),
     "$.encoder.hidden.attention.num_heads", "hidden_size 16 (at $.encoder.hidden_size) is not divisible by num_heads 5"),
    (scaffold(hidden={"type": "scaffold", "attention": {"type": "nope", "num_heads": 2},
                      "feedforward": {"type": "dense", "intermediate_size": 8}}),
     "$.encoder.hidden.attention", "unknown type 'nope'; known types: 'disentangled', 'multi_head', 'talking_heads'"),
    (scaffold(embedding={"type": "custom", "vocab_size": 50, "max_sequence_length": 8, "use_type_embeddings": True}),
     "$.encoder.embedding.type_vocab_size", "is required when use_type_embeddings is true"),
    (tiny_bert(parity={"sequence_lengths": [4, 99]}), "$.parity.sequence_lengths[1]", "99 exceeds"),
    (tiny_bert(export={"opset": 12}), "$.export.opset", "Input should be 17 or 18"),
    # duplicates were accepted silently (the parity grid ran and reported each case twice)
    (tiny_bert(export={"variants": ["onnx_int8", "tflite_int8", "onnx_int8"]}), "$.export.variants[2]",
     '"onnx_int8" is listed twice (already at variants[0])'),
    (tiny_bert(parity={"batch_sizes": [1, 3, 1]}), "$.parity.batch_sizes[2]", "1 is listed twice (already at "
                                                                               "batch_sizes[0])"),
    (tiny_bert(parity={"sequence_lengths": [4, 4]}), "$.parity.sequence_lengths[1]", "4 is listed twice"),
    # a tolerance (or a variant) that nothing built would read was ignored silently
    (tiny_bert(parity={"backends": {"onnx_packed_cpu": {"atol": 1e-3}}}), "$.parity.backends.onnx_packed_cpu",
     "a tolerance for onnx_packed_cpu, whose artifact this spec does not build ($.export.variants does not list "
     "'onnx_packed')"),
    (tiny_bert(export={"onnx": False}, parity={"backends": {"onnx_cpu": {"atol": 1e-3}}}),
     "$.parity.backends.onnx_cpu", "whose artifact this spec does not build ($.export.onnx is false)"),
    (tiny_bert(export={"tflite": False}, parity={"backends": {"tflite": {"atol": 1e-3}}}),
     "$.parity.backends.tflite", "($.export.tflite is false)"),
    (tiny_bert(export={"optimized": False, "variants": ["onnx_packed"]},
               parity={"backends": {"onnx_optimized_cuda": {"atol": 1e-3}}}),
     "$.parity.backends.onnx_optimized_cuda", "($.export.optimized is false)"),
    # a layer norm over one value outputs its beta whatever the input: the model would ignore its input
    (enc(hidden_size=1, num_attention_heads=1, intermediate_size=1), "$.encoder.hidden_size",
     "is 1: a hidden size of at least 2 is needed (a layer norm over a single value outputs its beta"),
    (scaffold(hidden_size=1, hidden={"type": "rezero", "num_attention_heads": 1, "intermediate_size": 4}),
     "$.encoder.hidden_size", "is 1: a hidden size of at least 2 is needed"),
    # a tester: a bare "Input should be False, got true" said neither why nor what to use instead
    (enc(type="albert", norm_first=True), "$.encoder.norm_first",
     "is true, but an albert encoder's shared block is post-LN, as Model Garden's AlbertEncoder and transformers' "
     "ALBERT compute it; for a pre-LN block shared by every layer use a scaffold encoder"),
    (enc(type="albert", embedding_width=1), "$.encoder.embedding_width",
     "is 1, but the embedding's layer norm normalizes over it"),
    (scaffold(embedding={"type": "custom", "vocab_size": 50, "max_sequence_length": 8, "use_layer_norm": True,
                         "embedding_width": 1}),
     "$.encoder.embedding.embedding_width", "is 1, but the embedding's layer norm normalizes over it"),
]


@pytest.mark.parametrize("data,path,message", MALFORMED, ids=[m[1] + ":" + m[2][:20] for m in MALFORMED])
def test_malformed_spec_reports_path_and_message(data, path, message):
    with pytest.raises(SpecError) as info:
        load_spec(data)
    problems = info.value.problems
    assert any(p == path and message in m for p, m in problems), problems


def test_all_errors_are_reported_at_once():
    data = enc(vocab_size=-1, dropout_rate=2.0, bogus=1)
    with pytest.raises(SpecError) as info:
        load_spec(data)
    paths = {p for p, _ in info.value.problems}
    assert {"$.encoder.vocab_size", "$.encoder.dropout_rate", "$.encoder.bogus"} <= paths


def test_cross_field_problems_are_listed_beside_field_problems():
    """One run lists every problem: the cross-field ones (hidden size by heads, parity lengths by positions) were
    dropped whenever a field itself was wrong. A cross problem that the stand-in for a wrong value could cause
    is left out, never reported wrongly."""
    spec = json.loads((ROOT / "specs" / "classifier.json").read_text())
    spec["encoder"]["hidden_size"], spec["head"]["num_classes"] = 770, 0
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert info.value.problems == [
        ("$.head.num_classes", "Input should be greater than or equal to 1, got 0"),
        ("$.encoder.num_attention_heads", "hidden_size 770 is not divisible by num_attention_heads 12")]
    mixed = json.loads((ROOT / "specs" / "mixed_blocks.json").read_text())
    mixed["encoder"]["hidden"][1]["feedforward"]["typo"] = 1
    mixed["parity"] = {"sequence_lengths": [4, 64]}
    with pytest.raises(SpecError) as info:
        load_spec(mixed)
    assert [p for p, _ in info.value.problems] == ["$.encoder.hidden[1].feedforward.typo", "$.parity.sequence_lengths[1]"]
    spec["encoder"]["hidden_size"], spec["encoder"]["num_attention_heads"] = "x", 5   # a default would stand in
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert [p for p, _ in info.value.problems] == ["$.encoder.hidden_size", "$.head.num_classes"]


def test_a_wrong_encoder_field_does_not_hide_the_export_and_parity_sections_problems():
    """A tester: vocab_size 1 (or "abc") hid a variant listed twice and a batch size listed twice, until fixed: the
    encoder cannot be taken out to check the rest, so export and parity are checked alone."""
    spec = json.loads((ROOT / "specs" / "classifier.json").read_text())
    spec["export"] = {**spec.get("export", {}), "variants": ["onnx_int8", "onnx_int8"]}
    spec["parity"] = {**spec.get("parity", {}), "batch_sizes": [1, 1], "sequence_lengths": [4, 100000]}
    for vocab in (1, "abc"):
        spec["encoder"]["vocab_size"] = vocab
        with pytest.raises(SpecError) as info:
            load_spec(spec)
        assert [p for p, _ in info.value.problems] == [
            "$.encoder.vocab_size", "$.export.variants[1]", "$.parity.batch_sizes[1]"], info.value.problems
    spec["export"]["variants"] = "onnx_int8"          # a wrong section of its own: its field problem alone
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert [p for p, _ in info.value.problems] == ["$.encoder.vocab_size", "$.export.variants",
                                                    "$.parity.batch_sizes[1]"], info.value.problems


def test_malformed_json_reports_line_and_column(tmp_spec):
    path = tmp_spec('{\n  "name": "x",\n  "encoder": {"type": "bert",, }\n}')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (where, msg), = info.value.problems
    assert where == "line 3, column 30" and msg.startswith("invalid JSON")


def test_missing_file_and_non_object(tmp_spec, tmp_path):
    with pytest.raises(SpecError, match="file not found") as info:
        load_spec(tmp_path / "nope.json")
    # one line naming the file, as every other missing file (it read "1 problem(s) in the spec:\n  $: file not found")
    assert str(info.value) == f"{tmp_path / 'nope.json'}: file not found (no spec file at this path)"
    with pytest.raises(SpecError, match="must be a JSON object"):
        load_spec(tmp_spec("[1, 2]"))


@pytest.mark.parametrize("path", SEED_SPECS + BENCHMARK_SPECS, ids=lambda p: p.stem)
def test_spec_round_trips(path):
    spec = load_spec(path)
    dumped = json.loads(json.dumps(dump_spec(spec)))
    assert load_spec(dumped) == spec
    assert dump_spec(load_spec(dumped)) == dumped


def test_single_block_and_list_forms_are_equivalent():
    block = {"type": "transformer", "num_attention_heads": 2, "intermediate_size": 32}
    assert load_spec(scaffold(hidden=block)).encoder.blocks() == load_spec(scaffold(hidden=[block, block])).encoder.blocks()


def test_schema_lists_registered_types():
    text = json.dumps(json_schema())
    for name in ("talking_heads", "rezero", "albert", "span_labeler", "pretrainer", "gated", "custom"):
        assert f'"{name}"' in text



def test_a_position_table_keeps_the_embeddings_width_static():
    """The position table sliced to the sequence's length kept no static width, so a width of 1 broadcast against
    it left the embeddings' last axis unknown and Keras could not build the next layer (`bertc inspect` / `build`
    crashed with a TypeError in LayerNormalization; hidden_size 1 is now refused, see MALFORMED)."""
    import keras

    from bertc.components.embeddings import CustomEmbeddingNetwork, CustomEmbeddingSpec

    spec = CustomEmbeddingSpec(vocab_size=50, max_sequence_length=8, use_position_embeddings=True)
    layer = CustomEmbeddingNetwork(spec=spec, hidden_size=1, name="embeddings")
    ids = {n: keras.Input((None,), dtype="int32", name=n) for n in spec.input_names}
    x, table = layer(ids)
    assert tuple(x.shape) == (None, None, 1) and tuple(table.shape) == (50, 1)


def test_the_smallest_and_largest_vocabularies_validate():
    import numpy as np

    from bertc.inputs import make_inputs

    spec = load_spec(enc(vocab_size=2))
    ids = make_inputs(spec, 3, 8, np.random.default_rng(0))["input_word_ids"]
    assert set(np.unique(ids)) <= {0, 1} and ids.max() == 1
    assert load_spec(enc(vocab_size=2**31, type_vocab_size=2**31)).encoder.vocab_size == 2**31
    schema = json_schema()["$defs"]["BertEncoderSpec"]["properties"]["vocab_size"]
    assert (schema["minimum"], schema["maximum"]) == (2, 2**31)



def test_validate_previews_the_files_that_export_onnx_false_builds(tmp_spec, tmp_path):
    """`export.onnx: false` leaves out the portable model.onnx alone (the optimized artifact is `export.optimized`,
    built without it), but `bertc validate` previewed no ONNX file at all, as for `--no-onnx`."""
    from bertc.cli import main
    from bertc.preflight import estimate

    data = tiny_bert(export={"onnx": False, "tflite": False})
    data["encoder"]["num_layers"] = 1
    out = tmp_path / "out"
    assert main(["build", str(tmp_spec(data)), "-o", str(out), "-q", "--no-parity"]) == 0
    written = sorted(p.name for p in out.iterdir() if p.name.startswith("model."))
    assert written == ["model.keras", "model.optimized.int8.onnx", "model.optimized.onnx"]
    spec = load_spec(data)
    assert sorted(estimate(spec).artifacts) == written
    assert "optimize onnx" in estimate(spec).stages and "export onnx" not in estimate(spec).stages
    assert sorted(estimate(spec, onnx=False).artifacts) == ["model.keras"]          # --no-onnx: no ONNX at all
    assert sorted(estimate(spec, optimize=False).artifacts) == ["model.keras"]      # --no-optimize



def test_validate_previews_the_saved_model_that_keep_saved_model_keeps():
    """A tester: ``export.keep_saved_model`` writes OUT/saved_model/ (the SavedModel the TFLite converter read),
    which the list of files ``bertc validate`` previews left out; without TFLite there is none."""
    from bertc.preflight import estimate

    kept = estimate(load_spec(tiny_bert(export={"keep_saved_model": True}))).artifacts
    assert "saved_model/" in kept and kept["saved_model/"] >= kept["model.tflite"] * 0.5
    assert "saved_model/" not in estimate(load_spec(tiny_bert(export={"keep_saved_model": True,
                                                                      "tflite": False}))).artifacts
    assert "saved_model/" not in estimate(load_spec(tiny_bert()), tflite=True).artifacts

def test_backend_tolerances_and_variants_that_are_built_validate():
    spec = load_spec(tiny_bert(export={"variants": ["onnx_packed"], "optimized": True},
                               parity={"backends": {"onnx_packed_cpu": {"atol": 1e-3}, "onnx_cuda": {"atol": 1e-3},
                                                    "onnx_optimized_cpu": {"atol": 1e-3}, "tflite": {"atol": 1e-3}},
                                       "batch_sizes": [3, 1], "sequence_lengths": [8, 2]}))
    assert spec.parity.tolerance("onnx_packed_cpu").atol == 1e-3
    # the default variants follow whatever is built, also once OUT/spec.json writes them out
    spec = load_spec(tiny_bert(export={"optimized": False, "tflite": False}))
    assert load_spec(dump_spec(spec)) == spec


def _schema_validator(capsys):
    """`bertc schema`'s output as a jsonschema validator (jsonschema comes with the test extra's ray[data])."""
    jsonschema = pytest.importorskip("jsonschema")
    from bertc.cli import main

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", SEED_SPECS + BENCHMARK_SPECS, ids=lambda p: p.stem)
def test_bundled_specs_validate_against_the_schema(path, capsys):
    """The schema gave a scaffold encoder's hidden as a list only, while bertc reads one block object too: an editor
    pointed at `bertc schema` flagged five bundled specs."""
    validator = _schema_validator(capsys)
    errors = [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(json.loads(path.read_text()))]
    assert not errors, errors


def test_the_schema_refuses_what_the_validator_refuses(capsys):
    validator = _schema_validator(capsys)
    block = {"type": "transformer", "num_attention_heads": 2, "intermediate_size": 32}
    accepted = [scaffold(hidden=block), scaffold(hidden=[block, block]), tiny_bert(parity={"backends": {
        "onnx_optimized_cpu": {"atol": 1e-3}}})]
    refused = [scaffold(hidden=[]), enc(vocab_size=1), enc(vocab_size=2**31 + 1),
               tiny_bert(parity={"backends": {"onnx_int8_cpu": {"atol": 1e-2}}}),   # judged by parity.task
               tiny_bert(export={"variants": ["onnx_int8", "onnx_int8"]}), tiny_bert(parity={"batch_sizes": [1, 1]}),
               tiny_bert(parity={"sequence_lengths": [4, 4]})]
    for data in accepted:
        load_spec(data)
        assert validator.is_valid(data), data
    for data in refused:
        with pytest.raises(SpecError):
            load_spec(data)
        assert not validator.is_valid(data), data


def test_a_nul_in_weights_is_a_spec_problem_not_an_internal_error():
    """A fuzzer: "weights": "ckpt\\u0000dir" (valid JSON) was exit 70 in validate and build (ValueError: embedded null
    byte, from resolving the path)."""
    data = json.loads((ROOT / "specs" / "classifier.json").read_text())
    data["weights"] = "ckpt\x00dir"
    with pytest.raises(SpecError) as info:
        load_spec(data)
    assert ("$.weights", "holds a NUL character (\\u0000), which no path can hold") in info.value.problems


def test_the_memory_estimate_of_a_masked_lm_makes_no_parity_inputs():
    """A fuzzer: a masked_lm spec of 1e8 positions (or a parity batch of 1e8) made the whole parity grid to measure
    it: gigabytes, a minute, then MemoryError (exit 70) in the estimate meant to refuse such a build. The sizes alone
    are the grid's."""
    from bertc.parity import grid_cases
    from bertc.preflight import outputs_held

    data = json.loads((ROOT / "specs" / "pretrainer.json").read_text())
    data["head"] = {"type": "masked_lm"}
    spec = load_spec(data)
    sizes = [int(c.inputs["input_word_ids"].size) for c in grid_cases(spec)]
    from bertc.preflight import OUTPUT_COPIES, logits_bytes

    assert outputs_held(spec, False) == logits_bytes(spec, sum(sizes)) + OUTPUT_COPIES * logits_bytes(spec, max(sizes))
    data["encoder"]["max_sequence_length"] = 100_000_000
    data["parity"] = {"batch_sizes": [100_000_000]}
    assert outputs_held(load_spec(data), False) > 10**18   # at once, from the sizes
