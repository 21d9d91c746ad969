"""Sliding-window attention in blocks: the local layers of ModernBERT at long sequences.

A local layer lets the query at i attend to the keys at ``|i - j| <= w`` (ModernBERT-base: w = 64). The
plain lowering runs one ``MultiHeadAttention`` over all S x S scores with the window as an
``attention_bias`` of -5000 outside it: the cost grows with S², and at S = 8192 one layer's scores
take 3 GB. The blocked form cuts the sequence into blocks of ``w`` queries; block i attends to the
``3 w`` keys from ``i w - w`` to ``i w + 2 w`` (each window's rows of k and v taken by one ``Gather``, the
positions before 0 and after S - 1 clamped to the ends; the queries' by another, the last block filled up with
copies of the last row, whose outputs are cut off), so one ``MultiHeadAttention`` over ``B * S / w`` blocks scores
``S x 3 w``: a constant (1, 1, w, 3 w) bias marks the window inside a block, and the key padding mask, gathered
from the mask padded by ``w`` zeros on either side, masks the padded keys and the clamped out-of-sequence ones
(weight exactly 0, as zero rows padded onto k and v had before: the same outputs bit for bit, without the
padded copies of q, k and v; 0.992 of that form's time at S 512, 20 interleaved rounds, AMD Zen 4).

Exactness. A key outside a query's window gets weight exactly zero in the plain form as soon as the
query has one key of weight 1 in its window (exp(-5000) underflows), which holds for every real
query (its own key) and for a padded query with a real key in its window: for those rows the two
forms sum the same terms. A padded query whose window holds no real key attends, in the plain form
and in Keras, to the real keys *outside* its window (:data:`bertc.components.modernbert.WINDOW_ADDER`
is half the padding mask's value, so padded rows do not depend on how far the padding goes), which
the blocks cannot see. So each local layer is an ``If``: the blocks when S >= :data:`BLOCKED_FROM`
half-widths and every position of the batch has a real key within its window (one cumulative sum of
the mask, once per batch), the plain form otherwise (short sequences, or a batch padded by more than
``w`` beyond a row's last real token). The window bias of the plain form is itself computed behind
the same condition, once per batch: at long S it is never built when the blocks run.

Measured (one ``MultiHeadAttention`` at ModernBERT-base width, 12 heads, B1, ORT CPU 2 threads, w = 64):
the blocks of ``w`` queries are slower below S = 384 (S 256: 1.75 against 1.48 ms), 10% faster at
S 384, 30% at S 512, 80% at S 2048 (19 against 92 ms); blocks of w / 2 or 2 w queries were slower at
every length. Other attentions (global layers, a position bias besides the window, the pruned last
layer's first token) keep the plain form; the fp16 variant takes the plain form
(:func:`bertc.optimize.local_attention.unblocked`), and the padding-free artifact
(:mod:`bertc.optimize.padding_free`) runs the blocks per sequence where a sequence's kept tokens are consecutive.

Global layers (:func:`key_masked_attention`): a ``MultiHeadAttention`` with the key padding mask and no bias is
an ``If`` on "no row of the batch is padded" (once per batch), whose then branch drops the mask: ONNX Runtime's
CPU kernel then takes its flash-attention path, which never holds the (B, N, S, S) scores: the same values to
rounding, in less time and memory (README, "Global layers without their mask";
``tools/bench_local_attention.py --unpadded``). A padded batch runs exactly the masked form. The passes that
rewrite attention take the masked form (:func:`bertc.optimize.local_attention.unblocked`).
"""
from __future__ import annotations

import numpy as np

# Blocked when the sequence is at least this many window half-widths long (384 for w = 64): the measured
# break-even is about 5.5 w (module docstring).
BLOCKED_FROM = 6
NAME = "local_attention"   # the If's name (``.../local_attention``): how the plain form is found again
PLAIN_BIAS = "bias_if_plain"   # the name's end of the If that builds the plain form's window bias
UNPADDED = "unpadded_attention"   # the name's end of a global attention's If (key_masked_attention)


def _plan(ctx, window: int, width: int, full_bias, window_adder: float) -> dict:
    """The values every blocked layer of this window reads, computed once per batch in the main graph."""
    g, w = ctx.g, window
    block, keys = w, 3 * w
    mask = ctx.mask                                                            # (B, S) int32
    with g.scope(f"local_blocks_{w}"):
        zero = g.ints([0], "zero")
        length = g.node("Shape", [mask], start=1, end=2, hint="length")       # (1,)
        batch = g.node("Shape", [mask], start=0, end=1, hint="batch")
        blocks = g.node("Div", [g.node("Add", [length, g.ints([block - 1], "round_up")]), g.ints([block], "block")],
                        hint="blocks")
        extra = g.node("Sub", [g.node("Mul", [blocks, g.ints([block], "block")]), length], hint="extra")
        back = g.node("Add", [extra, g.ints([w], "w")], hint="back")
        front = g.ints([w], "front")
        plan = {
            "length": length,
            "q_shape": g.ints([-1, block, width], "q_shape"),
            "kv_shape": g.ints([-1, keys, width], "kv_shape"),
            "out_shape": g.node("Concat", [batch, g.ints([-1, width], "rest")], axis=0, hint="out_shape"),
        }
        starts = g.node("Mul", [g.node("Range", [g.const(0, np.int64, "r0"), g.node("Squeeze", [blocks]),
                                                 g.const(1, np.int64, "r1")]), g.const(block, np.int64, "step")],
                        hint="block_starts")
        plan["index"] = g.node("Add", [g.node("Unsqueeze", [starts, g.ints([1], "axis1")]),
                                       g.const(np.arange(keys, dtype=np.int64)[None], np.int64, "offsets")],
                               hint="key_index")                                          # (blocks, 3w)
        # the windows' rows of k and v themselves: positions index - w, those outside 0..S-1 clamped to the nearest
        # end (rows the key mask masks: no copy of k and v padded with zero rows)
        last = g.node("Squeeze", [g.node("Sub", [g.node("Cast", [length], to=7), g.ints([1], "one")])], hint="last")
        plan["kv_index"] = g.node("Clip", [g.node("Sub", [plan["index"], g.const(w, np.int64, "w_scalar")]),
                                           g.const(0, np.int64, "first"), last], hint="kv_index")
        # the queries' rows, the last block filled up with copies of the last row (their outputs are cut off)
        plan["q_index"] = g.node("Clip", [g.node("Range", [g.const(0, np.int64, "q0"), g.node(
            "Squeeze", [g.node("Mul", [blocks, g.ints([block], "block")])]), g.const(1, np.int64, "q1")]),
            g.const(0, np.int64, "first"), last], hint="q_index")
        padded_mask = g.node("Pad", [mask, g.node("Concat", [zero, front, zero, back], axis=0)], hint="mask_padded")
        plan["key_mask"] = g.node("Reshape", [g.node("Gather", [padded_mask, plan["index"]], axis=1),
                                              g.ints([-1, keys], "key_mask_shape")], hint="key_mask")
        a = np.arange(block)[:, None]
        c = np.arange(keys)[None, :]
        inside = np.abs(c - w - a) <= w                      # key c of the block's window, query a of the block
        plan["bias"] = g.const(np.where(inside, 0.0, window_adder)[None, None], np.float32, "block_bias")
        # every position has a real key within w of it: C[i + 2w + 1] - C[i] over the mask padded by w + 1 / w
        counts_pad = g.ints([0, w + 1, 0, w], "count_pads")
        cumulative = g.node("CumSum", [g.node("Pad", [mask, counts_pad]), g.const(1, np.int64, "axis")],
                            hint="real_keys_before")
        hi = g.node("Slice", [cumulative, g.ints([2 * w + 1], "hi0"),
                              g.node("Add", [length, g.ints([2 * w + 1], "hi_off")]), g.ints([1], "ax")])
        lo = g.node("Slice", [cumulative, zero, length, g.ints([1], "ax")])
        covered = g.node("Greater", [g.node("ReduceMin", [g.node("Sub", [hi, lo], hint="real_keys_in_window")],
                                            keepdims=0), g.const(0, np.int32, "none")], hint="covered")
        long = g.node("Squeeze", [g.node("GreaterOrEqual", [length, g.ints([BLOCKED_FROM * w], "blocked_from")])],
                      hint="long")
        rows = g.node("Squeeze", [g.node("Greater", [batch, g.ints([0], "no_rows")])], hint="has_rows")
        plan["cond"] = g.node("And", [g.node("And", [long, covered]), rows], hint="blocked")   # B = 0: plain
        with g.branch() as dummy:
            none = g.node("Identity", [g.const(np.zeros((1, 1, 1, 1), np.float32), np.float32, "unused")])
    # the plain form's window bias, built only when the plain form runs
    with g.branch() as plain:
        bias = full_bias()
    plan["full_bias"] = g.if_node(plan["cond"], (dummy, none), (plain, bias), hint=f"window_{w}_{PLAIN_BIAS}")
    return plan


def windowed_attention(ctx, q, k, v, window: int, num_heads: int, width: int, full_bias, mask_filter_value: float,
                       window_adder: float):
    """``MultiHeadAttention`` of q, k, v (B, S, width) with the window ``|i - j| <= window`` and the padding
    mask (``mask_filter_value`` on padded keys): an ``If`` between the blocked form and the plain one (module
    docstring). ``full_bias``: makes the plain form's (1, 1, S, S) window bias, ``window_adder`` outside the
    window (called inside a branch)."""
    g = ctx.g
    plan = ctx.once(("local_blocks", window), lambda: _plan(ctx, window, width, full_bias, window_adder))
    attrs = {"num_heads": num_heads, "mask_filter_value": mask_filter_value}
    with g.branch() as blocked_nodes:
        qb = g.node("Reshape", [g.node("Gather", [q, plan["q_index"]], axis=1), plan["q_shape"]], hint="q_blocks")
        kb, vb = (g.node("Reshape", [g.node("Gather", [t, plan["kv_index"]], axis=1), plan["kv_shape"]],
                         hint=f"{hint}_windows") for t, hint in ((k, "k"), (v, "v")))
        att = g.ms("MultiHeadAttention", [qb, kb, vb, None, plan["key_mask"], plan["bias"]], hint="attention_blocks",
                   **attrs)
        blocked = g.node("Slice", [g.node("Reshape", [att, plan["out_shape"]]), g.ints([0], "s0"), plan["length"],
                                   g.ints([1], "s_ax")], hint="attention_blocked")
    with g.branch() as plain_nodes:
        plain = g.ms("MultiHeadAttention", [q, k, v, None, ctx.mask, plan["full_bias"]], hint="attention", **attrs)
    return g.if_node(plan["cond"], (blocked_nodes, blocked), (plain_nodes, plain), hint=NAME)


def _no_padding(ctx):
    """A bool scalar, once per batch: the batch has rows and none of them is padded (every mask value is
    non-zero; the minimum of an empty mask would be the largest int32, hence the rows test)."""
    g, mask = ctx.g, ctx.mask
    with g.scope("no_padding"):
        real = g.node("Cast", [g.node("Cast", [mask], to=9, hint="mask_bool")], to=6, hint="mask_real")
        full = g.node("GreaterOrEqual", [g.node("ReduceMin", [real], keepdims=0, hint="min_real"),
                                         g.const(1, np.int32, "one")], hint="unpadded")
        batch = g.node("Shape", [mask], start=0, end=1, hint="batch")
        rows = g.node("Squeeze", [g.node("Greater", [batch, g.ints([0], "no_rows")])], hint="has_rows")
        return g.node("And", [full, rows], hint="cond")


def key_masked_attention(ctx, q, k, v, **attrs):
    """``MultiHeadAttention`` of q, k, v with the key padding mask (``ctx.mask``) and no bias, as an ``If`` that
    drops the mask when no row is padded (module docstring: ONNX Runtime's flash-attention path)."""
    g = ctx.g
    cond = ctx.once("no_padding", lambda: _no_padding(ctx))
    with g.branch() as unmasked_nodes:
        unmasked = g.ms("MultiHeadAttention", [q, k, v], hint="attention_unpadded", num_heads=attrs["num_heads"])
    with g.branch() as masked_nodes:
        masked = g.ms("MultiHeadAttention", [q, k, v, None, ctx.mask], hint="attention", **attrs)
    return g.if_node(cond, (unmasked_nodes, unmasked), (masked_nodes, masked), hint=UNPADDED)
