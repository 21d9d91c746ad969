"""The fp16 artifacts compute in fp32 what fp16 cannot hold (bertc.optimize.half): a sentence embedding's L2
normalisation (its sum of squares overflows once the norm passes 256: zeros instead of the embedding), pooling
(weightedmean's sum of weights passes 65,504 above 361 tokens: zeros), rotary angles (fp16 holds no integer
above 2,048 and an angle of 1,000 radians only to 0.5: cos / sin caches off by up to 1 at long positions) and
sliding-window distances. ORT's CPU provider runs most of these ops through fp32 fallbacks, so CPU parity never
showed it; onnx's reference evaluator computes fp16 as fp16, as CUDA does."""
import json
import shutil
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from bertc.components.heads import lower_normalize
from bertc.onnx_graph import KEEP_FP32, GraphBuilder
from bertc.onnx_graph import all_graphs as _graphs
from bertc.optimize.half import _Types, kept_fp32, to_fp16

FIXTURES = "tests/fixtures/hf"


def _normalize_graph():
    g = GraphBuilder("normalize")
    x = g.add_input("x", TensorProto.FLOAT, ["batch", 8])
    with g.scope("head"):
        y = g.node("Identity", [x])     # the pooled vector, made inside the graph as in an artifact
        out = lower_normalize(types.SimpleNamespace(g=g), y)
    g.add_output(out, "sentence_embedding", TensorProto.FLOAT, ["batch", 8])
    return g.model(17)


def _sorted(model):
    """``model`` with its nodes in topological order (the converter appends its casts; ORT sorts, the reference
    evaluator does not)."""
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, order = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        assert ready, "a cycle"
        for n in ready:
            order.append(n)
            known.update(n.output)
            pending.remove(n)
    del model.graph.node[:]
    model.graph.node.extend(order)
    return model


def test_fp16_normalisation_of_a_long_vector():
    from onnx.reference import ReferenceEvaluator
    from onnxruntime.transformers.float16 import convert_float_to_float16

    x = np.full((2, 8), 300.0, np.float32)       # norm 849: its square sum (720,000) is inf in fp16
    x[1] = [0, 0, 0, 0, 0, 0, 0, 0]               # a zero vector stays zero
    want = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    plain = convert_float_to_float16(_normalize_graph(), keep_io_types=True)
    broken = ReferenceEvaluator(_sorted(plain)).run(None, {"x": x})[0]
    assert np.abs(broken[0]).max() == 0.0          # what the fp16 artifact gave: zeros instead of 0.354
    half, kept = to_fp16(_normalize_graph(), [])
    assert kept == 5
    onnx.checker.check_model(_sorted(half), full_check=True)
    got = ReferenceEvaluator(half).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert not np.isnan(got).any() and np.abs(got[1]).max() == 0.0


def _long_fixture(tmp, name: str, positions: int, pooling=None):
    """A copy of fixture ``name`` taking ``positions`` tokens (a rotary model: no position table to grow)."""
    src = tmp / name
    shutil.copytree(f"{FIXTURES}/{name}", src)
    if positions is None:
        return src
    config = json.loads((src / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (src / "config.json").write_text(json.dumps(config))
    if pooling:
        path = src / "1_Pooling" / "config.json"
        pool = json.loads(path.read_text())
        pool["pooling_mode"] = pooling
        path.write_text(json.dumps(pool))
        bert = json.loads((src / "sentence_bert_config.json").read_text())
        bert["max_seq_length"] = positions
        (src / "sentence_bert_config.json").write_text(json.dumps(bert))
    return src


def _build(work, src):
    from bertc.cli import main

    spec = work / f"{src.name}.json"
    assert main(["import", str(src), "-o", str(spec)]) == 0
    out = work / f"{src.name}_out"
    assert main(["build", str(spec), "-o", str(out), "--no-tflite", "--no-parity", "-q",
                 "--variants", "onnx_fp16,onnx_packed_fp16"]) == 0
    return out


@pytest.fixture(scope="module")
def long_builds(tmp_path_factory):
    work = tmp_path_factory.mktemp("fp16long")
    bert = work / "st_bert_mean_norm"    # EmbedLayerNormalization's first input is the ids: an fp16 type to find
    shutil.copytree(f"{FIXTURES}/st_bert_mean_norm", bert)
    return {"rotary": _build(work, _long_fixture(work, "modernbert_model", 4096)),
            "weightedmean": _build(work, _long_fixture(work, "st_modernbert_mean_norm", 1024, "weightedmean")),
            "bert": _build(work, bert),
            "roberta": _build(work, _long_fixture(work, "roberta_model", None)),   # position ids from the mask
            "concat": _build(work, _long_fixture(work, "st_bert_pooling_concat", None))}   # max pooling, a Dense


FILES = ["model.optimized.fp16.onnx", "model.packed.fp16.onnx"]


def _extract(model, inputs: dict, outputs: dict):
    """The nodes of ``model`` (in any of its graphs) from ``inputs`` to ``outputs`` (name -> element type), as
    one graph, sorted."""
    from onnx import helper

    graphs = list(_graphs(model.graph))
    producer = {o: n for g in graphs for n in g.node for o in n.output}
    inits = {i.name: i for g in graphs for i in g.initializer}
    nodes, used, todo = [], set(), list(outputs)
    while todo:
        name = todo.pop()
        if name in inputs or name in used or name in inits or not name:
            continue
        used.add(name)
        n = producer[name]
        if n not in nodes:
            nodes.append(n)
            todo.extend(n.input)
    needed = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "part", [helper.make_tensor_value_info(k, t, None) for k, t in inputs.items()],
                              [helper.make_tensor_value_info(k, t, None) for k, t in outputs.items()],
                              [inits[k] for k in needed if k in inits])
    return _sorted(helper.make_model(graph, opset_imports=model.opset_import))


@pytest.mark.parametrize("name", FILES)
def test_kept_nodes_compute_in_fp32(long_builds, name):
    """Every node of a kept scope, in every artifact and subgraph, reads fp32 or integer values only (its
    casts of fp16 values to fp32 aside)."""
    for build in long_builds.values():
        model = onnx.load(build / name)
        graphs = list(_graphs(model.graph))
        kinds = _Types(graphs)
        kept = [n for g in graphs for n in g.node if kept_fp32(n.name)
                and not (n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT)]
        assert kept or build.name.startswith("roberta")
        assert not any(n.op_type == "EmbedLayerNormalization" for g in graphs for n in g.node)
        for n in kept:
            for i in n.input:
                assert not i or kinds(i) != TensorProto.FLOAT16, (build.name, name, n.name, i)
        # an oracle of its own: ONNX Runtime refuses a graph whose types do not meet (an fp16 value into fp32 nodes)
        import onnxruntime as ort

        session = ort.InferenceSession(str(build / name), providers=["CPUExecutionProvider"])
        report = json.loads((build / "report.json").read_text())
        entry = next(a for a in report["artifacts"].values() if a["path"] == name)
        assert entry["kept_fp32_nodes"] > 0 or build.name.startswith("roberta")
    # the sentence embedding leaves its fp32 normalisation as fp32 (not through an fp16 copy)
    if name == "model.optimized.fp16.onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(long_builds["bert"] / name), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {"input_word_ids": rng.integers(5, 40, (2, 12)).astype(np.int32),
                 "input_mask": np.ones((2, 12), np.int32), "input_type_ids": np.zeros((2, 12), np.int32)}
        got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
        assert (got.astype(np.float16).astype(np.float32) != got).any()


@pytest.mark.parametrize("name", FILES)
def test_rotary_caches_of_long_sequences(long_builds, name):
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(long_builds["rotary"] / name)
    made = [o for g in _graphs(model.graph) for n in g.node for o in n.output]
    # the caches of the first theta, the global layers' (160,000), as the rotary attentions read them
    cos = next(o for o in made if o.endswith(f"rotary/{KEEP_FP32}/cos_cache_0/out0"))
    sin = cos.replace("cos_cache_0", "sin_cache_0")
    part = _extract(model, {"input_mask": TensorProto.INT32}, {cos: TensorProto.FLOAT16, sin: TensorProto.FLOAT16})
    length = 4096
    got_cos, got_sin = ReferenceEvaluator(part).run(None, {"input_mask": np.ones((1, length), np.int32)})
    assert got_cos.dtype == np.float16
    assert got_cos.shape[0] == length
    half = got_cos.shape[-1]
    inv = 1.0 / 160000.0 ** (np.arange(0, 2 * half, 2, dtype=np.float64) / (2 * half))
    angles = np.arange(length, dtype=np.float64)[:, None] * inv.astype(np.float32)
    np.testing.assert_allclose(got_cos.astype(np.float64), np.cos(angles), atol=2e-3)
    np.testing.assert_allclose(got_sin.astype(np.float64), np.sin(angles), atol=2e-3)


@pytest.mark.parametrize("name", FILES)
def test_weightedmean_of_a_long_sequence(long_builds, name):
    """600 real tokens: weightedmean's weights sum to 180,300 (inf in fp16)."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(long_builds["weightedmean"] / name)
    for g in _graphs(model.graph):   # (the padding-free artifact: each of its two graphs)
        read = {i for n in g.node if "weightedmean_pooling" in n.name for i in n.input}
        entry = next((n for n in g.node if n.name.endswith(f"/{KEEP_FP32}/cast") and n.output[0] in read), None)
        if entry is not None:
            norm = next(n for n in g.node if "l2_normalize" in n.name and n.op_type == "Div").output[0]
            break
    tokens = entry.input[0]
    part = _extract(model, {tokens: TensorProto.FLOAT16, "input_mask": TensorProto.INT32}, {norm: TensorProto.FLOAT})
    rng = np.random.default_rng(0)
    length, width = 600, 32
    x = rng.normal(size=(2, length, width)).astype(np.float16)
    mask = np.ones((2, length), np.int32)
    mask[1, 500:] = 0
    got = ReferenceEvaluator(part).run(None, {tokens: x, "input_mask": mask})[0]
    for row in range(2):
        real = int(mask[row].sum())
        weights = np.arange(1, real + 1, dtype=np.float64)[:, None]
        pooled = (x[row, :real].astype(np.float64) * weights).sum(0) / weights.sum()
        want = pooled / np.linalg.norm(pooled)
        np.testing.assert_allclose(got[row], want, atol=2e-3)


@pytest.mark.parametrize("head_size", [64])
def test_fp16_tflite_rotary_angles(tmp_path, head_size):
    """The fp16 TFLite model stores the graph's float constants in float16: one float16 frequency is off by up to
    4.9e-4 of itself, which turned angles at 4,096 tokens by up to 1 radian (0.12 at 512). The frequencies are
    split into a float16-exact part and the rest, and the converted layer's cos / sin stay within float16's
    rounding of the float64 truth at every position."""
    import tensorflow as tf

    from bertc.components.positions import RotaryPositions, RotarySpec, rotary_inv_freq

    layer = RotaryPositions(RotarySpec(theta=10000.0), hidden_size=head_size, num_heads=1)

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32)])
    def caches(mask):
        cos, sin = layer({"input_mask": mask})["rotary"][0]
        return {"cos": cos, "sin": sin}

    module = tf.Module()
    module.caches = caches
    converter = tf.lite.TFLiteConverter.from_concrete_functions([caches.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    path = tmp_path / "rotary.fp16.tflite"
    path.write_bytes(converter.convert())
    from ai_edge_litert.interpreter import Interpreter

    length = 4096
    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    got = runner(mask=np.ones((1, length), np.int32))
    inv = rotary_inv_freq(10000.0, head_size).astype(np.float64)
    angles = np.arange(length, dtype=np.float64)[:, None] * inv
    angles = np.concatenate([angles, angles], axis=-1)
    # float32's own rounding of an angle near 4,096 is 2.4e-4: the bound is float32's, not float16's
    np.testing.assert_allclose(got["cos"], np.cos(angles), atol=1e-3)
    np.testing.assert_allclose(got["sin"], np.sin(angles), atol=1e-3)


@pytest.mark.parametrize("build", ["bert", "roberta"])
def test_unfused_embeddings_compute_what_the_fused_operator_does(long_builds, build):
    """The fp16 artifacts take EmbedLayerNormalization apart (ORT's CUDA kernel sums its statistics in fp16): in
    fp32 the standard ops give what the fused operator gives, with positions counted from 0 (BERT) or given as
    position ids (RoBERTa's, from the mask)."""
    import onnxruntime as ort

    from bertc.optimize.half import unfuse_embed_layer_norms

    fused = onnx.load(long_builds[build] / "model.optimized.onnx")
    unfused = onnx.load(long_builds[build] / "model.optimized.onnx")
    assert unfuse_embed_layer_norms(unfused) == 1
    assert not any(n.op_type == "EmbedLayerNormalization" for n in unfused.graph.node)
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (fused, unfused)]
    rng = np.random.default_rng(1)
    mask = np.ones((3, 12), np.int32)
    mask[1, 7:] = 0
    mask[2, 3:5] = 0
    feeds = {"input_word_ids": rng.integers(5, 40, (3, 12)).astype(np.int32), "input_mask": mask,
             "input_type_ids": np.zeros((3, 12), np.int32)}
    names = {i.name for i in sessions[0].get_inputs()}
    a, b = (s.run(None, {k: v for k, v in feeds.items() if k in names}) for s in sessions)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=2e-6)


def test_kept_nodes_inside_a_subgraph():
    """Kept nodes in an If's branches get their casts there (a rebuilt graph holds copies of its subgraphs: the
    branches' changes were lost, and the norm of a vector of 300s was inf)."""
    import onnxruntime as ort
    from onnx import helper

    def branch(tag):
        nodes = [helper.make_node("Mul", ["x", "x"], [f"{tag}_sq"], name=f"{tag}/{KEEP_FP32}/sq"),
                 helper.make_node("ReduceSum", [f"{tag}_sq"], [f"{tag}_sum"], name=f"{tag}/{KEEP_FP32}/sum", keepdims=1),
                 helper.make_node("Sqrt", [f"{tag}_sum"], [tag], name=f"{tag}/{KEEP_FP32}/sqrt")]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(tag, TensorProto.FLOAT, None)])

    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("then"), else_branch=branch("else")),
         helper.make_node("Identity", ["y"], ["out"], name="out")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    half, kept = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), [])
    assert kept == 6
    session = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    for c in (True, False):
        got = session.run(None, {"x": np.full((2, 3), 300, np.float32), "c": np.array(c)})[0]
        np.testing.assert_allclose(got, [[np.sqrt(6 * 300.0 ** 2)]], rtol=1e-3)


@pytest.mark.parametrize("name", FILES)
def test_an_all_padding_row_leaves_max_pooling_finite(long_builds, name):
    """Max pooling fills padding with -1e9 (as sentence-transformers): a row without a real token pools to -1e9,
    computed in fp32, then cast to fp16 for the Dense after it: -inf, and NaN out of the Dense (found by a
    tester's emulation; ORT's CPU provider showed it too). A kept value leaves its scope saturated to fp16's range."""
    import onnxruntime as ort

    build = long_builds["concat"]
    rng = np.random.default_rng(0)
    mask = np.ones((3, 12), np.int32)
    mask[1, 7:] = 0
    mask[2] = 0
    feeds = {"input_word_ids": rng.integers(5, 40, (3, 12)).astype(np.int32), "input_mask": mask,
             "input_type_ids": np.zeros((3, 12), np.int32)}
    got, want = (ort.InferenceSession(str(build / f), providers=["CPUExecutionProvider"]) for f in (name, "model.onnx"))
    got, want = (s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0] for s in (got, want))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-2)
