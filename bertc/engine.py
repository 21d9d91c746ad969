"""The engine of ``bertc run``: the bundled tokenizer, one ONNX Runtime session and the decoding of the
model's outputs into results (:class:`Engine`), built from a small picklable :class:`EngineParts` (the model bytes,
the tokenizer JSON, the labels): :class:`bertc.runtime.Runtime` builds one in this process, each Ray actor
(:mod:`bertc.run_ray`) its own.

Batching: texts are tokenized a window at a time (``window`` rows, bounded memory), sorted by token length
inside the window, cut into batches padded to their own longest row, and their results put back in input
order. A batch holds at most ``batch_size`` texts and at most ``max_batch_tokens`` padded tokens (rows x
longest), and its attention scores at most ``ATTENTION_CELLS_PER_TOKEN`` x that many cells a head (rows x
longest²: what a CPU attention kernel allocates, heads x cells floats); a text longer than that runs alone
(:func:`batch_cuts`). Short texts batch ``batch_size`` at a time; a long-context model's long documents go
a few, or one, at a time instead of exhausting memory. What the model's outputs are decides what a result
is (:func:`result_kind`):

====================================  ==============  ===============================================
outputs                               kind            one result
====================================  ==============  ===============================================
one (batch, dim) features output      embedding       float32 vector (``sentence_embedding``, or the
                                                      encoder's ``pooled_output`` without a head)
``logits`` (batch, classes)           classification  ``{"label", "label_id", "score", "scores"}``;
                                                      scores: softmax, sigmoid or raw logits, as the
                                                      checkpoint's tools give them (:func:`score_function`)
``start_logits`` + ``end_logits``     span            ``{"start", "end", "text", "score"}``: character
                                                      offsets into the text (the pair's, for a pair); a
                                                      context longer than the model's maximum is read in
                                                      overlapping windows (``doc_stride`` tokens shared
                                                      by neighbours), as transformers' QA pipeline reads
                                                      and scores it (:meth:`Engine._span_candidates`)
``logits`` (batch, seq, classes)      tags            ``{"tags": [{"word", "start", "end", "in", "label",
                                                      "score"}]}``: one per word, its first token's tag
                                                      (softmax; sigmoid of a single class: an ELECTRA
                                                      discriminator's probability of "replaced"); a text
                                                      longer than the model is read in overlapping
                                                      windows, each word tagged from the one where it
                                                      has the most context
the same, with ``top_k``            spans           ``{"answers": [...]}``: the ``top_k`` best, so
an NLI classifier's ``logits`` with   zero_shot       ``{"labels", "scores"}``: the candidate labels,
candidate labels                                      likeliest first, as transformers' zero-shot
                                                      pipeline scores them (:func:`zero_shot_ids`)
a sentence embedder's output, with    similarity      ``{"similarity"}``: the two texts of each pair
``similarity`` and text pairs                         embedded alone, then compared by the model's
                                                      similarity function (:func:`similarity_function`,
                                                      as ``SentenceTransformer.similarity_pairwise``)
a one-score classifier (a cross-      rank            ``{"ranking": [{"index", "text", "score"}]}``: a
encoder reranker) with ``rank``                       query's documents, best first, scored as the
                                                      classifier scores pairs (``CrossEncoder.rank``)
a sentence embedder's output, with    rank            the same; each document's score: the similarity of
``rank``                                              its embedding with the query's (as ``similarity``)
a ``multiple_choice`` head's          choice          ``{"choice", "answer", "score", "scores"}``: each
``logits`` (batch, 1)                                 (text, choice) pair scored, the softmax over a
                                                      question's choices (transformers'
                                                      ``*ForMultipleChoice``); the likeliest choice's
                                                      index and text
a masked-LM head's logits (batch,     fill_mask       ``{"sequence", "masks": [{"start", "end", "in",
seq, vocab), or ``masked_lm`` at                      "predictions": [{"token", "token_id", "score"}]}]}``:
``masked_lm_positions`` (a                            the ``top_k`` likeliest tokens at each mask token
pretrainer's)                                         of the text (its character offsets, ``in`` the text
                                                      or its pair); ``sequence``: the text with each mask
                                                      replaced by its likeliest token (as transformers'
                                                      fill-mask pipeline gives them)
====================================  ==============  ===============================================
"""
from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from bertc.errors import BackendLoadError, InputError
from bertc.run_io import Record
from bertc.text import lowercased

POSITIONS = "masked_lm_positions"   # a pretrainer's input: where its masked-LM head predicts
DEFAULT_TOP_K = 5                   # fill-mask predictions per mask (transformers' fill-mask pipeline's default)
MAX_ANSWER_TOKENS = 30  # the longest span the span labeler may return, in tokens (transformers' run_qa.py's default)
# a span labeler's long context, a token classifier's long text: the tokens each window shares with the next
# (transformers' QA pipeline's doc_stride default: 128, or half the window where that is less), held below what
# a window holds of the context
DEFAULT_DOC_STRIDE = 128
DEFAULT_BATCH = 32   # texts per model call, at most
# padded tokens per model call (rows x longest; text-embeddings-inference's default max_batch_tokens): 32 texts
# of 512 tokens, so a 512-position model batches as before; attention's rows x longest² is held under 1,024 x
# that (a 768-wide, 12-head model's unpadded and masked attention buffers then stay under ~0.9 GB)
DEFAULT_BATCH_TOKENS = 16384
ATTENTION_CELLS_PER_TOKEN = 1024
# a text (or one text of a pair) longer than this many characters a token of the row (and than LONG_TEXT_CHARS) that
# truncation cuts is tokenized from a prefix, cut at whitespace, that holds the row's tokens and LONG_TEXT_MARGIN more
# (Engine._prefix): a 50 MB line is not tokenized whole (~100 bytes of memory a character) to keep 16 tokens
LONG_TEXT_CHARS_PER_TOKEN, LONG_TEXT_CHARS, LONG_TEXT_MARGIN = 32, 16384, 16
COUNT_CHARS = 1 << 20   # a long text counted in tokens (Engine._count), so many characters at a time
PREFIX_CHARS = 1024     # the shortest prefix of a long text tried (Engine._prefix)
# a batch stops growing when the next (longer) text would pad the rows already in it by more than this many
# tokens, and by more than a quarter of their real tokens: one long text in a window is not a whole batch's width
PADDING_PER_CUT = 256

DEFAULT_HYPOTHESIS = "This example is {}."   # transformers' zero-shot-classification pipeline's template


# sentence-transformers' similarity functions (``similarity_fn_name``), pairwise, on float64 vectors
def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine in [-1, 1]: a text with itself gave 1.0000000000000002 (rounding of the two norms)."""
    return float(np.clip(a @ b / max(np.linalg.norm(a), 1e-12) / max(np.linalg.norm(b), 1e-12), -1.0, 1.0))  # NaN
    # stays NaN (max(-1.0, nan) was -1.0: "most dissimilar")


SIMILARITIES = {"cosine": _cosine,
                "dot": lambda a, b: float(a @ b), "dot_product": lambda a, b: float(a @ b),
                "euclidean": lambda a, b: -float(np.linalg.norm(a - b)),
                "manhattan": lambda a, b: -float(np.abs(a - b).sum())}


def windows(records: Iterable[Record], size: int, stall: Optional[float] = None) -> Iterator[list[Record]]:
    """``records`` in windows of ``size``. ``stall`` (seconds): the input may pause or trickle (a pipe: ``tail -f log
    | bertc run OUT - -o -``), and a window is given as far as it came once its first record has waited that long,
    so that each record's result leaves within about ``stall`` of its coming (it waited for 2,048 lines, or the
    input's end); the records are then read by a thread of their own, at most a window ahead, and a reading error
    is raised where the records had it."""
    if stall is not None:
        yield from _windows_as_read(records, size, stall)
        return
    window: list = []
    for r in records:
        window.append(r)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _windows_as_read(records: Iterable[Record], size: int, stall: float) -> Iterator[list[Record]]:
    import queue
    import time

    read: queue.Queue = queue.Queue(maxsize=size)
    end, stop = object(), threading.Event()

    def offer(item) -> bool:
        """``item`` queued, or False once the run stopped early (an error, Ctrl-C): then read no further."""
        while not stop.is_set():
            try:
                read.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        items = iter(records)
        try:
            for r in items:
                if not offer((r, None)):
                    return
            offer((end, None))
        except BaseException as exc:   # given to the consumer, which raises it
            offer((end, exc))
        finally:   # the input closed (a pipe's writer then meets a closed pipe, as when the run read it itself)
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    # a daemon: a run that stops while the input is still open and silent does not wait for the input's end
    threading.Thread(target=reader, name="bertc-input", daemon=True).start()
    window: list = []
    deadline = 0.0
    try:
        while True:
            try:
                r, exc = read.get(timeout=max(0.0, deadline - time.monotonic()) if window else None)
            except queue.Empty:   # the window's first record has waited long enough: what came so far is run
                yield window
                window = []
                continue
            if r is end:
                if exc is not None:
                    raise exc
                if window:
                    yield window
                return
            if not window:
                deadline = time.monotonic() + stall
            window.append(r)
            if len(window) >= size:
                yield window
                window = []
    finally:
        stop.set()


# --- the engine: tokenizer + session + decoding --------------------------------------------------------

@dataclass
class EngineParts:
    """Everything an :class:`Engine` needs, picklable (sent once to each Ray actor)."""

    model: bytes                     # the ONNX file's bytes (b"": opened from model_path)
    model_name: str
    tokenizer_json: str
    provider: str
    precision: str
    kind: str
    outputs: dict
    inputs: list
    max_len: int
    truncate: bool
    labels: Optional[list] = None
    batch_size: int = DEFAULT_BATCH
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    provider_options: dict = field(default_factory=dict)
    scores: str = "softmax"          # a classifier's scores: softmax, sigmoid (each class alone) or raw logits
    prompt: str = ""                 # put before each text (a sentence embedder's prompt)
    mask: tuple = ("", -1)           # fill-mask: the mask token and its id
    top_k: int = DEFAULT_TOP_K       # fill-mask: predictions per mask
    positions: int = 0               # fill-mask on a pretrainer: its masked_lm_positions per text
    doc_stride: int = DEFAULT_DOC_STRIDE   # a span labeler's long context: tokens shared by neighbouring windows
    no_answer: bool = False          # a span labeler may answer "" (its leading token's start x end wins)
    aggregation: str = "first"       # a token classifier's word: its first token's, its tokens' mean or max
    answers: int = 0                 # a span labeler's answers (0 the best alone, k its k best as a list);
                                     # a ranking's documents (0 all)
    candidates: tuple = ()           # zero-shot: the candidate labels
    hypothesis: str = DEFAULT_HYPOTHESIS   # zero-shot: the hypothesis each label is put in
    nli: tuple = (0, 0)              # zero-shot: the (entailment, contradiction) class ids
    multi_label: bool = False        # zero-shot: each label alone (entailment vs contradiction)
    similarity: str = "cosine"       # a sentence embedder's pairs: how their two embeddings are compared
    pair_prompt: str = ""            # ... and the prompt put before each pair's second text
    vocab_size: int = 0              # the model's vocabulary (0: unknown): a token id at or above it is refused
    lowercase: bool = False          # str.lower() of each input first (sentence_bert_config.json's do_lower_case)
    external_data_folder: str = ""   # where a model over 2 GB keeps its weights (its .data file): read from there
    external_data_stamp: tuple = ()  # (its name, size, mtime_ns) when the Runtime checked it against the manifest
    model_path: str = ""             # where the session reads the model when ``model`` is empty (this process
                                     # only: parts sent elsewhere carry the bytes, Runtime.portable_parts)


def batch_cuts(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch over rows of these token ``lengths`` (ascending): each batch as many
    rows as fit, at most ``batch_size``, with rows x longest <= ``max_tokens`` and rows x longest² <=
    :data:`ATTENTION_CELLS_PER_TOKEN` x ``max_tokens``; a row that alone exceeds them is a batch of its own.
    A row that would pad the rows before it by more than :data:`PADDING_PER_CUT` tokens and a quarter of their
    real tokens starts the next batch (a window's few long texts go together, not each with 31 short ones).
    Sorted lengths give the fewest batches (each padded to its own longest)."""
    cells = ATTENTION_CELLS_PER_TOKEN * max_tokens
    cuts, start, n = [], 0, len(lengths)
    while start < n:
        stop, longest, real = start + 1, lengths[start], lengths[start]
        while stop < n and stop - start < batch_size:
            rows, wider = stop - start + 1, max(longest, lengths[stop])
            if rows * wider > max_tokens or rows * wider * wider > cells:
                break
            if (rows - 1) * (wider - longest) > max(PADDING_PER_CUT, real / 4):
                break
            stop, longest, real = stop + 1, wider, real + lengths[stop]
        cuts.append((start, stop))
        start = stop
    return cuts


def _same_external_data(parts: EngineParts) -> None:
    """The weights file ONNX Runtime is about to read is the one the Runtime checked against the build's manifest
    (its size and modification time then): a rebuild of OUT between the Runtime and its first run (or in another
    process the Runtime was sent to) would be run as the build that passed parity."""
    if not parts.external_data_stamp:
        return
    name, size, mtime = parts.external_data_stamp
    path = Path(parts.external_data_folder) / name
    try:
        stat = path.stat()
    except OSError as exc:
        raise BackendLoadError(f"{path}: the weights of {parts.model_name} (its external data) cannot be read now: "
                               f"{exc.strerror or exc}; create the Runtime again") from None
    if (stat.st_size, stat.st_mtime_ns) != (size, mtime):
        raise BackendLoadError(f"{path}: the weights of {parts.model_name} (its external data) changed after the "
                               f"Runtime checked them against the build's manifest (a rebuild of OUT?): create the "
                               f"Runtime again")


class _Window:
    """An overflowing window of an encoding, with the type ids its first window's template gives."""
    __slots__ = ("_encoding", "type_ids")

    def __init__(self, encoding, type_ids: list):
        self._encoding, self.type_ids = encoding, type_ids

    def __getattr__(self, name):   # called for what the slots do not hold (never for them once set)
        if name.startswith("__") or name in _Window.__slots__:   # copy / pickle look for these before setting
            raise AttributeError(name)
        return getattr(self._encoding, name)

    def __len__(self) -> int:
        return len(self._encoding)

    def __reduce__(self):
        return _Window, (self._encoding, self.type_ids)


def _as_template_types(window, first):
    """``window`` (an overflowing encoding of ``first``'s text) with the type ids ``first`` has for each part: the
    tokenizers library gives the second text's tokens of an overflowing window type id 1, whatever the
    post-processor's template says (XLM-R's and CamemBERT's ``<s> $A </s> </s> $B:0 </s>``: their QA windows fed an
    embedding table of one type id the index 1, and ONNX Runtime stopped the run). Special tokens take the type ids of
    ``first``'s, in order."""
    part = {}
    specials = []
    for sequence, type_id in zip(first.sequence_ids, first.type_ids):
        if sequence is None:
            specials.append(type_id)
        else:
            part.setdefault(sequence, type_id)
    types, k = [], 0
    for sequence, type_id in zip(window.sequence_ids, window.type_ids):
        if sequence is None:
            types.append(specials[min(k, len(specials) - 1)] if specials else type_id)
            k += 1
        else:
            types.append(part.get(sequence, type_id))
    return window if types == list(window.type_ids) else _Window(window, types)


class Engine:
    def __init__(self, parts: EngineParts, threads: Optional[int] = None, spinning: bool = True):
        import onnxruntime as ort
        import tokenizers

        from bertc.requirements import require_onnxruntime, require_version

        require_onnxruntime(ort)
        require_version(tokenizers, "tokenizers", "text")
        self.parts = parts
        from bertc.backends import session_options

        options = session_options(threads, spinning)
        if parts.external_data_folder:   # the graph is in memory, its weights in a file of that folder
            _same_external_data(parts)
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             parts.external_data_folder)
        provider = (parts.provider, parts.provider_options) if parts.provider_options else parts.provider
        try:
            self.session = ort.InferenceSession(parts.model or parts.model_path, options, providers=[provider])
        except Exception as exc:
            raise BackendLoadError(f"{parts.model_name}: cannot be loaded by ONNX Runtime: "
                                   f"{' '.join(str(exc).split())[:300]}") from None
        if parts.provider not in self.session.get_providers():   # not asked for "cuda, else cpu": said as it is
            raise BackendLoadError(f"{parts.model_name}: ONNX Runtime could not use {parts.provider} (the session "
                                   f"has {', '.join(self.session.get_providers())})")
        types = {i.name: i.type for i in self.session.get_inputs()}
        self.int_types = {n: (np.int64 if types.get(n) == "tensor(int64)" else np.int32) for n in parts.inputs}
        self.tokenizer = tokenizers.Tokenizer.from_str(parts.tokenizer_json)
        # the end an over-long text is cut at (tokenizer_config.json's truncation_side, bertc.text.load_tokenizer)
        self.direction = (self.tokenizer.truncation or {}).get("direction", "right")
        # zero-shot pairs cut the text, never the hypothesis (as transformers' pipeline)
        self.tokenizer.enable_truncation(max_length=parts.max_len, direction=self.direction,
                                         strategy="only_first" if parts.kind == "zero_shot" else "longest_first")
        self.tokenizer.no_padding()
        special = self.tokenizer.num_special_tokens_to_add(False)
        if parts.max_len <= special:   # the tokenizers library ignores a truncation below its special tokens
            raise InputError(f"max_length {parts.max_len}: leaves no room for the text: the tokenizer adds {special} "
                             f"special tokens to each row (at least {special + 1})")
        # tokens added to the tokenizer after training, never given embeddings (the model's vocabulary was not
        # resized): their ids are out of the embedding table's range, which ONNX Runtime reports as a crash
        self.vocab_limit = parts.vocab_size if 0 < parts.vocab_size < self.tokenizer.get_vocab_size(True) else 0
        # what differs between threads calling predict() at once (one engine may serve several): the records
        # truncation cut. self.tokenizer's settings never change after this, nor do those of the untruncated copy
        # (_plain), and ONNX Runtime's session.run is thread-safe. A long context's tokenizer, whose truncation each
        # context sets (its stride), is lent to one call at a time from a pool: one a thread was made anew (a parse
        # of tokenizer.json, a second for XLM-R's) in every thread of a thread-per-request server, and kept
        self._local = threading.local()
        self._windowing: list = []   # tokenizers free to lend (list.pop / append: atomic)
        self._plain_tokenizer = None
        self.output_names = list(parts.outputs.values())
        self.embeds = "embedding" in parts.outputs   # a sentence embedder's ranking: similarities, not pair scores

    @property
    def cut(self) -> set:
        """Where the records that truncation cut in this thread's last :meth:`predict` are (``Record.where``)."""
        if not hasattr(self._local, "cut"):
            self._local.cut = set()
        return self._local.cut

    # tokens -------------------------------------------------------------------------------------------
    def encode(self, records: Sequence[Record], prompt: Optional[str] = None) -> list:
        """One encoding per record (a span labeler's long context: see :meth:`features`); ``prompt`` (default: the
        sentence embedder's) before each single text."""
        prompt = self.parts.prompt if prompt is None else prompt
        inputs = [prompt + r.text if r.pair is None else (r.text, r.pair) for r in records]
        if self.parts.lowercase:   # as sentence-transformers: the prompt and the text, str.lower() (its final sigma)
            inputs = [lowercased(x) for x in inputs]
        if self.direction == "right":
            inputs = [x if self.windowed(r) else self._shortened(x) for r, x in zip(records, inputs)]
        else:   # cut on the left: a long single text's end is kept (a pair is tokenized whole)
            inputs = [x if self.windowed(r) or not isinstance(x, str) else self._ending(x)
                      for r, x in zip(records, inputs)]
        try:
            encodings = self.tokenizer.encode_batch(inputs)
        except Exception:   # tokenizers' truncation error: a zero-shot hypothesis that alone outgrows the model
            for r, x in zip(records, inputs):
                try:
                    self.tokenizer.encode(*x) if isinstance(x, tuple) else self.tokenizer.encode(x)
                except Exception as exc:
                    if self.parts.kind == "zero_shot":
                        raise InputError(f"{r.where}: the hypothesis {x[1]!r} leaves no room for the text in the "
                                         f"model's {self.parts.max_len} tokens; use a shorter template or "
                                         f"label") from None
                    raise InputError(f"{r.where}: cannot be cut to the model's maximum of {self.parts.max_len} "
                                     f"tokens ({' '.join(str(exc).split())})") from None
            raise
        pair_special = self.tokenizer.num_special_tokens_to_add(True)
        for r in records:   # a pair needs a token of each text beside its special tokens (a zero-shot hypothesis:
            # its own message below), or the tokenizers library cuts both to nothing and the row is scored anyway
            if r.pair is not None and self.parts.kind != "zero_shot" and self.parts.max_len < pair_special + 2 \
                    and not self.windowed(r):
                raise InputError(f"{r.where}: max_length {self.parts.max_len} leaves no room for a pair's texts: the "
                                 f"tokenizer adds {pair_special} special tokens to a pair (at least {pair_special + 2})")
        for r, e in zip(records, encodings):
            if len(e.ids) > self.parts.max_len:   # truncation the tokenizers library ignored (a pair's specials)
                raise InputError(f"{r.where}: cannot be cut to {self.parts.max_len} tokens: the tokenizer adds "
                                 f"{self.tokenizer.num_special_tokens_to_add(r.pair is not None)} special tokens to "
                                 f"{'a pair' if r.pair is not None else 'each row'} (max_length too small)")
            if self.vocab_limit:   # what the model runs: the encoding, and a windowed record's other windows
                for x in [e, *e.overflowing] if self.windowed(r) else [e]:
                    if x.ids and max(x.ids) >= self.vocab_limit:
                        self._outside_vocabulary(r, x)
            if e.overflowing and not self.windowed(r):
                if not self.parts.truncate:
                    raise InputError(f"{r.where}: the text is longer than the model's maximum of "
                                     f"{self.parts.max_len} tokens; pass --truncate to cut it "
                                     f"(Runtime(..., truncate=True))")
                self.cut.add(r.where)   # the input record this row came from was cut
        if self.parts.kind == "fill_mask":
            token, token_id = self.parts.mask
            for r, e in zip(records, encodings):
                masks = e.ids.count(token_id)
                if not masks:
                    end = "first" if self.direction == "right" else "last"
                    cut = f" within the model's {end} {self.parts.max_len} tokens" if e.overflowing else ""
                    raise InputError(f"{r.where}: no {token} in the text{cut}; fill-mask predicts the tokens "
                                     f"written as {token}")
                if self.parts.positions and masks > self.parts.positions:
                    raise InputError(f"{r.where}: {masks} {token} tokens; this model predicts at most "
                                     f"{self.parts.positions} a text")
        return encodings

    def _plain(self):
        """The copy of the tokenizer without truncation (to count a text's tokens), shared by every thread."""
        import tokenizers

        tok = self._plain_tokenizer
        if tok is None:   # (threads that come at once may each make one: one is kept; no lock a fork could leave held)
            tok = tokenizers.Tokenizer.from_str(self.parts.tokenizer_json)
            tok.no_truncation()
            tok.no_padding()
            self._plain_tokenizer = tok
        return tok

    def _count(self, text: str) -> tuple[int, int]:
        """(the tokens of ``text``, how many that count may be off by): counted :data:`COUNT_CHARS` characters at a
        time (memory bounded by them), each piece cut as :func:`_cut` cuts, ``LONG_TEXT_MARGIN`` tokens of doubt a
        cut."""
        total, start, cuts = 0, 0, 0
        while start < len(text):
            end = _cut(text, start + COUNT_CHARS, start) if start + COUNT_CHARS < len(text) else len(text)
            end = len(text) if end < 0 else end
            total += len(self._plain().encode(text[start:end], add_special_tokens=False).ids)
            start, cuts = end, cuts + 1
        return total, max(cuts - 1, 0) * LONG_TEXT_MARGIN

    def _prefix(self, text: str, tokens: int) -> tuple[str, int]:
        """(a prefix of ``text`` of at least ``tokens`` tokens, its tokens), or (``text``, -1) where none is found: cut
        (:func:`_cut`) past 8 characters a token, tried 4 times as long until it holds that many."""
        size = max(PREFIX_CHARS, 8 * tokens)
        while size < len(text):
            cut = _cut(text, size)
            if cut <= 0:
                break
            count = len(self._plain().encode(text[:cut], add_special_tokens=False).ids)
            if count >= tokens:
                return text[:cut], count
            size *= 4
        return text, -1

    def _ending(self, text: str) -> str:
        """A long text as the end of it that left truncation cuts as it cuts the whole (:meth:`_shortened` for a
        tokenizer that keeps a text's end): cut (:func:`_cut`) where it holds the row's tokens and
        ``LONG_TEXT_MARGIN`` more, tried 4 times as long until it does; the whole where no place is found."""
        if len(text) <= max(LONG_TEXT_CHARS, LONG_TEXT_CHARS_PER_TOKEN * self.parts.max_len):
            return text
        tokens = self.parts.max_len + LONG_TEXT_MARGIN
        size = max(PREFIX_CHARS, 8 * tokens)
        while size < len(text):
            cut = _cut(text, len(text) - size)
            if cut <= 0:
                break
            if len(self._plain().encode(text[cut:], add_special_tokens=False).ids) >= tokens:
                return text[cut:]
            size *= 4
        return text

    def _shortened(self, x):
        """A text, or a (text, pair) tuple, whose over-long texts (over ``LONG_TEXT_CHARS`` characters, and
        ``LONG_TEXT_CHARS_PER_TOKEN`` a token of the row) are cut to prefixes that truncation cuts as it cuts the whole
        (the same tokens kept, offsets, overflow; the whole text is never tokenized at once): each prefix holds the
        row's tokens and ``LONG_TEXT_MARGIN`` more, so that the cut is far from every token kept and the prefix
        overflows the row as the text does. A zero-shot pair cuts only its text, never the hypothesis. A pair cut
        longest first keeps, of each text, what depends only on which is the longer: the cut one's prefix is made
        longer than the other text (or, both cut, the longer one's than the shorter one's, where the row's room is odd
        and a count of each, piece by piece, says which is longer). Where none of that holds, the whole."""
        limit = max(LONG_TEXT_CHARS, LONG_TEXT_CHARS_PER_TOKEN * self.parts.max_len)
        least = self.parts.max_len + LONG_TEXT_MARGIN
        if isinstance(x, str):
            return self._prefix(x, least)[0] if len(x) > limit else x
        long = [len(t) > limit for t in x]
        if self.parts.kind == "zero_shot" or not all(long):   # truncation only_first, or one text cut
            if not long[0] and (self.parts.kind == "zero_shot" or not long[1]):
                return x
            k = 0 if long[0] else 1
            other = 0 if self.parts.kind == "zero_shot" else len(self._plain().encode(x[1 - k],
                                                                                   add_special_tokens=False).ids)
            cut, count = self._prefix(x[k], max(least, other + 1))
            return x if count < 0 else ((cut, x[1]) if k == 0 else (x[0], cut))
        room = self.parts.max_len - self.tokenizer.num_special_tokens_to_add(True)
        shorter = 0
        if room % 2:   # each keeps half the room, the longer one the odd token: which is it?
            (na, da), (nb, db) = self._count(x[0]), self._count(x[1])
            if abs(na - nb) <= da + db:
                return x
            shorter = 0 if na < nb else 1
        first, count = self._prefix(x[shorter], least)
        second, more = self._prefix(x[1 - shorter], max(least, count + 1))
        if count < 0 or more < 0:
            return x
        return (first, second) if shorter == 0 else (second, first)

    def _outside_vocabulary(self, r: Record, e) -> None:
        t = next(t for t, i in enumerate(e.ids) if i >= self.vocab_limit)
        raise InputError(f"{r.where}: the token {e.tokens[t]!r} (id {e.ids[t]}) is outside the model's vocabulary "
                         f"of {self.vocab_limit}: the tokenizer has {self.tokenizer.get_vocab_size(True)} tokens, so "
                         f"tokens were added to it and the model's embeddings were not resized (transformers: "
                         f"model.resize_token_embeddings(len(tokenizer)))")

    def windowed(self, record: Record) -> bool:
        """Whether this record is read in overlapping windows when it does not fit the model: a span labeler's
        context, a token classifier's single text (its pairs are cut or refused as any other head's)."""
        return self.parts.kind == "span" or (self.parts.kind == "tags" and record.pair is None)

    def features(self, records: Sequence[Record]) -> tuple[list, list[int]]:
        """The encodings the model runs on and, for each, the index of its record: one per record, except a
        record that does not fit the model and is read in windows (:meth:`windowed`): overlapping windows of
        its context (each with the whole question; :meth:`context_windows`)."""
        if self.parts.kind == "zero_shot":   # one (text, hypothesis) pair per candidate label, record by record
            for r in records:
                if r.pair is not None:
                    raise InputError(f"{r.where}: zero-shot classification takes one text, not a pair")
            pairs = [Record(r.text, self.parts.hypothesis.format(label), r.where)
                     for r in records for label in self.parts.candidates]
            n = len(self.parts.candidates)
            return self.encode(pairs), [i // n for i in range(len(pairs))]
        if self.parts.kind == "similarity":   # each text of a pair embedded alone
            singles = []
            for r in records:
                if r.pair is None:
                    raise InputError(f"{r.where}: one text; the similarity of a pair needs two (--pair-field, or a "
                                     f"tab between them in a .txt)")
                singles.extend((Record(self.parts.prompt + r.text, None, r.where),
                                Record(self.parts.pair_prompt + r.pair, None, r.where)))
            return self.encode(singles, prompt=""), [i // 2 for i in range(len(singles))]
        if self.parts.kind == "embedding" and self.parts.outputs["embedding"] == "sentence_embedding":
            paired = next((r for r in records if r.pair is not None), None)
            if paired is not None:
                raise InputError(f"{paired.where}: a pair of texts; a sentence embedder embeds one text a row "
                                 f"(sentence-transformers never joins two into one input): drop the pair, or pass "
                                 f"--similarity (Runtime(..., similarity=True)) to compare the two texts' embeddings")
        if self.parts.kind == "rank" and self.embeds:   # the query and each of its documents embedded alone
            singles, owners = [], []
            for k, r in enumerate(records):
                self._check_ranked(r)
                singles.append(Record(self.parts.prompt + r.text, None, r.where))
                singles.extend(Record(self.parts.pair_prompt + d, None, r.where) for d in r.choices)
                owners.extend([k] * (1 + len(r.choices)))
            return self.encode(singles, prompt=""), owners
        if self.parts.kind in ("choice", "rank"):   # one (text, choice) pair per choice; a pair leads each choice
            pairs, owners = [], []
            for k, r in enumerate(records):
                if self.parts.kind == "rank":
                    self._check_ranked(r)
                if not r.choices:
                    raise InputError(f"{r.where}: no choices; a multiple-choice model scores each text's choices "
                                     f"(a list per row: --choices-field, or Runtime.run([(text, [choice, ...])]))")
                pairs.extend(Record(r.text, c if r.pair is None else f"{r.pair} {c}", r.where) for c in r.choices)
                owners.extend([k] * len(r.choices))
            return self.encode(pairs), owners
        if self.parts.kind == "span":   # a question answered from a context: a lone text is neither
            alone = next((r for r in records if r.pair is None), None)
            if alone is not None:
                raise InputError(f"{alone.where}: one text; a span labeler answers a question from a context and "
                                 f"needs both (--pair-field, or a tab between them in a .txt; "
                                 f"Runtime.run([(question, context)]))")
        encodings = self.encode(records)
        if self.parts.kind not in ("span", "tags"):
            return encodings, list(range(len(records)))
        features, owners = [], []
        for i, (r, e) in enumerate(zip(records, encodings)):
            windows = self.context_windows(r) if e.overflowing and self.windowed(r) else [e]
            features.extend(windows)
            owners.extend([i] * len(windows))
        return features, owners

    def _check_ranked(self, r: Record) -> None:
        if not r.choices:
            raise InputError(f"{r.where}: no documents; a ranking orders each query's documents (a list per "
                             f"row: --documents-field, or Runtime.run([(query, [document, ...])]))")
        if r.pair is not None:
            raise InputError(f"{r.where}: a ranking " + ("compares its query with each document" if self.embeds else
                                                         "pairs its query with each document")
                             + "; drop the pair (--pair-field)")

    def context_windows(self, record: Record) -> list:
        """A long context's windows, as transformers' question-answering pipeline reads one: every window
        holds the whole question (the first text of a pair; a token classifier's single text is all context) and
        as much of the context as fits, and shares ``doc_stride`` tokens with the next, or one fewer than the context it holds
        where that is less (so that each window moves on; the pipeline refuses such a stride). A question that
        leaves no room for the context is refused naming the line."""
        import tokenizers

        try:   # one no other call uses meanwhile: its truncation is set for each context
            tok = self._windowing.pop()
        except IndexError:
            tok = tokenizers.Tokenizer.from_str(self.parts.tokenizer_json)
            tok.no_padding()
        try:
            return self._context_windows(tok, record)
        finally:
            self._windowing.append(tok)

    def _context_windows(self, tok, record: Record) -> list:
        pair = record.pair is not None
        tok.no_truncation()
        question = len(tok.encode(record.text, add_special_tokens=False).ids) if pair else 0
        special = tok.num_special_tokens_to_add(pair)
        room = self.parts.max_len - special - question
        if room < 1:
            raise InputError(f"{record.where}: the question ({question} tokens) and the special tokens ({special}) "
                             f"leave no room for the context in a row of max_length {self.parts.max_len} tokens")
        tok.enable_truncation(max_length=self.parts.max_len, stride=min(self.parts.doc_stride, room - 1),
                              strategy="only_second" if pair else "longest_first")   # (windows read all of it,
        # from its start, whichever end the model's truncation cuts: the windows' order is the text's)
        first = tok.encode(record.text, record.pair) if pair else tok.encode(record.text)
        return [first, *(_as_template_types(window, first) for window in first.overflowing)]

    def _feeds(self, encodings) -> dict:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        arrays = {"input_word_ids": ids, "input_mask": mask, "input_type_ids": types}
        if self.parts.positions:   # a pretrainer's: the mask tokens' positions, 0 after them (predicted, not read)
            arrays[POSITIONS] = np.zeros((len(encodings), self.parts.positions), np.int64)
            for i, e in enumerate(encodings):
                where = self._mask_positions(e)
                arrays[POSITIONS][i, :len(where)] = where
        return {n: arrays[n].astype(self.int_types[n]) for n in self.parts.inputs}

    def _mask_positions(self, e) -> list[int]:
        token_id = self.parts.mask[1]
        return [t for t, i in enumerate(e.ids) if i == token_id]

    # the model ----------------------------------------------------------------------------------------
    def predict(self, records: Sequence[Record]) -> list:
        """One result per record, in the records' order: the batches are cut from the records (a long
        context's windows: :meth:`features`) sorted by token length and padded to their own longest."""
        self._local.cut = set()
        if not records:
            return []
        encodings, owners = self.features(records)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        results: list = [None] * len(records)
        counts = np.bincount(owners, minlength=len(records))   # features per record
        # what is decoded once a record's every feature has run: a token classifier's windows' logits, a span
        # labeler's windows' candidates, a zero-shot text's logits for each candidate label
        pending: dict = {}
        for start, stop in batch_cuts([len(encodings[i].ids) for i in order], self.parts.batch_size,
                                      self.parts.max_batch_tokens):
            chunk = order[start:stop]
            batch = [encodings[i] for i in chunk]
            values = dict(zip(self.output_names, self.session.run(self.output_names, self._feeds(batch))))
            for j, i in enumerate(chunk):
                k = owners[i]
                if self.parts.kind == "tags" and counts[k] > 1:
                    pending.setdefault(k, []).append((i, np.array(values["logits"][j][:len(encodings[i].ids)])))
                elif self.parts.kind in ("zero_shot", "choice") or (self.parts.kind == "rank" and not self.embeds):
                    # a label's, a choice's, a document's pair score
                    pending.setdefault(k, []).append((i, np.array(values["logits"][j], np.float64)))
                elif self.parts.kind in ("similarity", "rank"):
                    # similarity, feature i: record i // 2, its text (even) or pair (odd); rank: the query, then
                    # each document
                    pending.setdefault(k, []).append((i, np.array(values[self.parts.outputs["embedding"]][j],
                                                                  np.float64)))
                elif self.parts.kind == "span":   # every window's candidates, summed once all are in
                    pending.setdefault(k, []).append((i, self._span_candidates(
                        values[self.parts.outputs["start"]][j], values[self.parts.outputs["end"]][j], encodings[i],
                        records[k])))
                else:
                    results[k] = self._decode(values, j, encodings[i], records[k])
        for k, parts in pending.items():
            parts = sorted(parts, key=lambda p: p[0])   # window order
            if self.parts.kind == "zero_shot":
                results[k] = self._zero_shot(np.stack([logits for _, logits in parts]))
            elif self.parts.kind == "choice":
                results[k] = self._choice(np.stack([logits[0] for _, logits in parts]), records[k])
            elif self.parts.kind == "rank" and self.embeds:
                similar = SIMILARITIES[self.parts.similarity]
                results[k] = self._ranking(np.array([similar(parts[0][1], d) for _, d in parts[1:]]), records[k],
                                           "raw")
            elif self.parts.kind == "rank":
                results[k] = self._ranking(np.stack([logits[0] for _, logits in parts]), records[k])
            elif self.parts.kind == "similarity":
                results[k] = {"similarity": SIMILARITIES[self.parts.similarity](parts[0][1], parts[1][1])}
            elif self.parts.kind == "span":
                results[k] = self._span_answer([c for _, (candidates, _) in parts for c in candidates],
                                               min(null for _, (_, null) in parts) if self.parts.no_answer else None,
                                               self.parts.answers)
            else:
                tags = self._window_tags(parts, encodings, records[k])
                results[k] = self._tag_result(tags, parts[0][1].shape[-1], records[k])
        return results

    # decoding -----------------------------------------------------------------------------------------
    def _label(self, k: int) -> str:
        labels = self.parts.labels
        return labels[k] if labels and k < len(labels) else f"LABEL_{k}"

    def _decode(self, values: dict, j: int, e, record: Record):
        kind, outs = self.parts.kind, self.parts.outputs
        if kind == "embedding":
            return np.asarray(values[outs["embedding"]][j], np.float32)
        if kind == "classification":
            logits = values["logits"][j].astype(np.float64)
            probs = {"softmax": _softmax, "sigmoid": _sigmoid, "raw": lambda x: x}[self.parts.scores](logits)
            k = int(np.argmax(probs))
            return {"label": self._label(k), "label_id": k, "score": float(probs[k]),
                    "scores": [float(p) for p in probs]}
        if kind == "fill_mask":
            return self._fill(values[outs["logits"]][j], e, record)
        return self._tag_result(self._tags(values["logits"][j], e, record), values["logits"].shape[-1], record)

    @staticmethod
    def _choice(scores: np.ndarray, record: Record) -> dict:
        """A multiple-choice question's result: the softmax over its choices' scores (transformers'
        ``*ForMultipleChoice`` logits, reshaped to (questions, choices)); the likeliest choice, the first on a tie."""
        p = _softmax(scores)
        k = int(np.argmax(p))
        return {"choice": k, "answer": record.choices[k], "score": float(p[k]), "scores": [float(x) for x in p]}

    def _ranking(self, logits: np.ndarray, record: Record, activation: Optional[str] = None) -> dict:
        """A query's documents, best first, as ``CrossEncoder.rank`` orders them: each (query, document) pair's score
        as the classifier scores it (the CrossEncoder's activation: sigmoid, or the raw logit), sorted high to low
        (equal scores in the input's order), the ``top_k`` best when it is set. A sentence embedder's: the
        similarities of the query's embedding with each document's (``activation`` "raw"), as
        ``sentence_transformers.util.semantic_search`` orders a corpus by them."""
        scores = {"sigmoid": _sigmoid, "raw": lambda x: x}[activation or self.parts.scores](logits)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        order = order[:self.parts.answers] if self.parts.answers else order
        return {"ranking": [{"index": i, "text": record.choices[i], "score": float(scores[i])} for i in order]}

    def _fill(self, logits, e, record: Record) -> dict:
        """The ``top_k`` likeliest tokens at each mask token (softmax over the vocabulary, as transformers'
        fill-mask pipeline), and the text with each mask replaced by its likeliest one."""
        where = self._mask_positions(e)
        rows = logits[:len(where)] if self.parts.positions else logits[where]
        ids, masks = list(e.ids), []
        for t, row in zip(where, rows):
            p = _softmax(row.astype(np.float64))
            k = min(self.parts.top_k, p.shape[-1])
            top = np.argpartition(-p, k - 1)[:k]
            top = top[np.lexsort((top, -p[top]))]   # likeliest first; equal scores by token id
            begin, end = e.offsets[t]
            masks.append({"start": int(begin), "end": int(end), "in": "pair" if e.sequence_ids[t] == 1 else "text",
                          "predictions": [{"token": self.tokenizer.decode([int(i)], skip_special_tokens=False),
                                           "token_id": int(i), "score": float(p[i])} for i in top]})
            ids[t] = int(top[0])
        return {"sequence": self.tokenizer.decode(ids, skip_special_tokens=True), "masks": masks}

    def _span_candidates(self, start_logits, end_logits, e, record: Record) -> tuple[list, float]:
        """One window's candidate answers, as transformers 4's question-answering pipeline finds them (its
        ``select_starts_ends`` / ``decode_spans``, ``align_to_words``): softmax of the start and of
        the end logits over the context's tokens and the leading special token ([CLS], ``<s>``: the mass a model
        trained with unanswerable questions puts on "no answer" in this window, which makes windows comparable);
        then the 2k + 10 likeliest spans of the context for k answers (start <= end < start +
        :data:`MAX_ANSWER_TOKENS`, p(start) x p(end)), each widened to whole words. ``[(score, start, end, text)]``
        in character offsets; and this window's no-answer score, the leading token's p(start) x p(end) (0.0
        without one)."""
        context = 1 if record.pair is not None else 0
        text = record.pair if record.pair is not None else record.text
        n = len(e.ids)
        inside = np.array([e.sequence_ids[t] == context and e.special_tokens_mask[t] == 0 for t in range(n)])
        if not inside.any():
            return [], 0.0
        normal = inside.copy()
        normal[0] = bool(e.special_tokens_mask[0])
        p_start = _softmax(np.where(normal, start_logits[:n].astype(np.float64), -np.inf))
        p_end = _softmax(np.where(normal, end_logits[:n].astype(np.float64), -np.inf))
        null = float(p_start[0] * p_end[0]) if normal[0] else 0.0
        p_start[~inside], p_end[~inside] = 0.0, 0.0   # the leading token normalizes, never answers
        scores = np.tril(np.triu(np.outer(p_start, p_end)), MAX_ANSWER_TOKENS - 1).ravel()
        # the spans a window offers before word alignment: as the pipeline's, 2 x its top_k + 10
        top = np.argsort(-scores, kind="stable")[:2 * max(self.parts.answers, 1) + 10]
        first, last = {}, {}
        for t, w in enumerate(e.word_ids):
            if w is not None and e.sequence_ids[t] == context:
                first.setdefault(w, t)
                last[w] = t
        out = []
        for flat in top:
            s, t = divmod(int(flat), n)
            if not (inside[s] and inside[t]) or not 0 <= t - s < MAX_ANSWER_TOKENS:   # outside the band: score 0
                continue
            begin = e.offsets[first[e.word_ids[s]]][0] if e.word_ids[s] is not None else e.offsets[s][0]
            end = e.offsets[last[e.word_ids[t]]][1] if e.word_ids[t] is not None else e.offsets[t][1]
            begin, end = _answer_span(text, int(begin), int(end))
            if begin < end:   # white space alone (a byte-level BPE's token of tabs or spaces) is no answer
                out.append((float(scores[flat]), begin, end, text[begin:end]))
        return out, null

    def _zero_shot(self, logits: np.ndarray) -> dict:
        """One text's candidate labels from its (labels, classes) NLI logits, as transformers' zero-shot pipeline
        scores them: softmax of the entailment logits over the labels, or with ``multi_label`` (or a single
        label) each label's softmax of contradiction vs entailment; likeliest first."""
        entail, contra = self.parts.nli
        if self.parts.multi_label or len(self.parts.candidates) == 1:
            scores = _softmax(logits[:, [contra, entail]])[:, 1]
        else:
            scores = _softmax(logits[:, entail])
        order = np.argsort(scores)[::-1]   # the pipeline's order, equal scores included (the last given first)
        return {"labels": [self.parts.candidates[i] for i in order], "scores": [float(scores[i]) for i in order]}

    @staticmethod
    def _span_answer(candidates: list, null: Optional[float] = None, answers: int = 0) -> dict:
        """The answer of a record from its windows' candidates (in window order, each window's likeliest first):
        as the pipeline, one answer per text (compared without case), its score the sum of its candidates'
        (one answer found in two overlapping windows, or from two spans that widen to the same words, adds up),
        its span the first candidate's; the highest score wins, the first found where they tie. ``null`` (with
        ``no_answer``: the least of the windows' no-answer scores, as the pipeline's
        ``handle_impossible_answer``) competes as the answer "" at 0..0, after the others where it ties.
        ``answers`` k > 0: ``{"answers": [...]}``, the k best so (the pipeline's ``top_k``)."""
        found: dict = {}
        for score, begin, end, text in candidates:
            key = text.lower()
            if key in found:
                found[key]["score"] += score
            else:
                found[key] = {"start": begin, "end": end, "text": text, "score": score}
        ranked = list(found.values()) + ([{"start": 0, "end": 0, "text": "", "score": null}] if null is not None else [])
        ranked.sort(key=lambda a: -a["score"])   # stable: the first found first among equals
        if answers:
            return {"answers": ranked[:answers]}
        return ranked[0] if ranked else {"start": 0, "end": 0, "text": "", "score": 0.0}

    @staticmethod
    def _words(e) -> dict:
        """``(sequence, word) -> [first token, last token, start, end]`` of each word of an encoding, in order
        (``start`` / ``end``: character offsets of its first token's start and its last token's end)."""
        words: dict = {}
        for t, word in enumerate(e.word_ids):
            if word is None or e.special_tokens_mask[t]:
                continue
            key = (e.sequence_ids[t], word)
            begin, end = e.offsets[t]
            if key not in words:
                words[key] = [t, t, begin, end]
            else:
                words[key][1], words[key][3] = t, end
        return words

    def _tag(self, logits, key, begin: int, end: int, record: Record) -> dict:
        """One word's tag from its tokens' ``logits`` (tokens, classes), as transformers' token-classification
        pipeline labels a word (``aggregation``): its first token's probabilities, their mean over its tokens,
        or those of its token with the highest one (a token's alone for "simple")."""
        text = record.text if key[0] == 0 else record.pair
        # one class (an ELECTRA discriminator's "replaced"): its probability, as a one-class classifier's
        probs = (_sigmoid if logits.shape[-1] == 1 else _softmax)(logits.astype(np.float64))
        aggregation = self.parts.aggregation
        probs = probs.mean(axis=0) if aggregation == "average" else \
            probs[int(np.argmax(probs.max(axis=-1)))] if aggregation == "max" else probs[0]
        k = int(np.argmax(probs))
        # SentencePiece's tokens (DeBERTa-v3, XLM-R) carry the space before a word ("▁Cats" at 3..8 of "The Cats"):
        # the word is its characters, not the space (the pipeline's word has none either)
        while begin < end and text[begin].isspace():
            begin += 1
        while end > begin and text[end - 1].isspace():
            end -= 1
        return {"word": text[begin:end], "start": int(begin), "end": int(end),
                "in": "pair" if key[0] == 1 else "text", "label": self._label(k), "score": float(probs[k])}

    def _tags(self, logits, e, record: Record) -> list:
        tags = []
        for key, (first, last, begin, end) in self._words(e).items():
            if self.parts.aggregation == "simple":   # a tag per token: the pipeline's "simple" groups tokens
                tags.extend(self._token_tags(_by_token(e, range(first, last + 1), logits), key, record))
            else:
                tags.append((key, self._tag(logits[first:last + 1], key, begin, end, record)))
        return _spoken(tags, record)

    def _token_tags(self, tokens: dict, key, record: Record) -> list:
        """``aggregation`` "simple": each of a word's tokens (``{(character offsets, k): logits}``, :func:`_by_token`)
        its own tag, as transformers' pipeline labels them before it groups them (its "none" lists them)."""
        return [((key[0], (key[1], token)), self._tag(row[None], key, token[0][0], token[0][1], record))
                for token, row in sorted(tokens.items())]

    @staticmethod
    def _tag_result(tags: list, classes: int, record: Record) -> dict:
        """``{"tags", "entities"}`` from ``(word key, tag)`` in word order. Entities as transformers'
        token-classification pipeline groups words (``aggregation_strategy`` first / average / max: the words'
        labels as :meth:`_tag` gives them; "simple": the tokens', a tag each): neighbouring words of one entity type (``B-X`` / ``I-X`` / ``X``) are one entity
        unless a word's label begins with ``B-``, ``O`` words are no entity, and an entity never crosses from a
        text into its pair. ``label``: the type, ``score``: the mean of its words' scores, ``start`` / ``end`` /
        ``text``: its character span. A one-class model (an ELECTRA discriminator) has no entities."""
        entities, current = [], None   # current: the entity the next word may join
        for (sequence, _), tag in tags if classes > 1 else []:
            label = tag["label"]
            kind = label[2:] if label[:2] in ("B-", "I-") else label
            if kind == "O":
                current = None
            elif current and current["sequence"] == sequence and current["label"] == kind and label[:2] != "B-":
                current["end"] = tag["end"]
                current["scores"].append(tag["score"])
            else:
                current = {"label": kind, "start": tag["start"], "end": tag["end"], "in": tag["in"],
                           "scores": [tag["score"]], "sequence": sequence}
                entities.append(current)
        for x in entities:
            text = record.text if x.pop("sequence") == 0 else record.pair
            x["text"], x["score"] = text[x["start"]:x["end"]], float(np.mean(x.pop("scores")))
        return {"tags": [tag for _, tag in tags], "entities": entities}

    def _window_tags(self, parts: list, encodings: list, record: Record) -> list:
        """A long text's tags from its overlapping windows (``parts``: (feature index, logits), in window order):
        each word tagged from the window that holds its first token, most of its tokens and, among those, the
        most tokens on its nearer side (the first window counts as open on the left, the last on the right: a
        text's ends are not cut), as BERT's reference code picks a token's "max context" window. A word with more
        tokens than a window shares with the next is whole in none: it keeps its whole span, and its tokens that
        window lacks are read from the other windows (``average`` / ``max`` see every token once)."""
        windows = [(self._words(encodings[i]), encodings[i], logits) for i, logits in parts]
        starts: dict = {}
        for words, _, _ in windows:
            for key, (_, _, begin, _) in words.items():
                starts[key] = min(begin, starts.get(key, begin))
        seen: dict = {}   # word -> [(rank, {token's character offsets: its logits}, start, end)], one per window
        for w, (words, e, logits) in enumerate(windows):
            content = [t for t, s in enumerate(e.sequence_ids) if s is not None and not e.special_tokens_mask[t]]
            for key, (first, last, begin, end) in words.items():
                left = np.inf if w == 0 else first - content[0]
                right = np.inf if w == len(windows) - 1 else content[-1] - last
                rank = (begin == starts[key], last - first + 1, min(left, right))
                tokens = _by_token(e, range(first, last + 1), logits)
                seen.setdefault(key, []).append((rank, tokens, begin, end))
        tags = []
        for key in sorted(seen):
            held = sorted(seen[key], key=lambda x: x[0], reverse=True)   # stable: the earlier window among equals
            tokens: dict = {}
            for _, part, _, _ in held:   # the best window's tokens, then what it lacks from the others
                for offsets, row in part.items():
                    tokens.setdefault(offsets, row)
            if self.parts.aggregation == "simple":
                tags.extend(self._token_tags(tokens, key, record))
                continue
            row = np.stack([tokens[o] for o in sorted(tokens)])
            begin, end = min(x[2] for x in held), max(x[3] for x in held)
            tags.append((key, self._tag(row, key, begin, end, record)))
        return _spoken(tags, record)


# where a long text may be cut (Engine._prefix): white space to every tokenizer (BERT's normalizer deletes \x0b and
# \x0c as control characters, joining the words around them: no place to cut)
_SPACES = " \t\n\r"
_WHITESPACE = re.compile(f"[{_SPACES}]")


def _by_token(e, tokens: range, logits) -> dict:
    """``{(character offsets, k): logits}`` of an encoding's ``tokens`` (one word's), ``k`` counting the word's
    earlier tokens at the same offsets: a byte-level BPE splits a character of several bytes ("é", an emoji) into
    tokens that share its offsets, each read (keyed by offsets alone, all but the last were lost)."""
    out: dict = {}
    for t in tokens:
        offsets = tuple(e.offsets[t])
        k = 0
        while (offsets, k) in out:
            k += 1
        out[(offsets, k)] = logits[t]
    return out


def _spoken(tags: list, record: Record) -> list:
    """The ``(word key, tag)`` of words that are more than white space: a byte-level BPE's token for a second space
    ("Ġ"), a lone SentencePiece "▁", is a word of the tokenizer's and no word of the text (an empty tag, or one
    splitting an entity). A word ends after the combining marks that follow it where no other word holds them (in
    decomposed text, NFD, an uncased WordPiece normalizer drops the accents: "José" was the word "Jose")."""
    kept = [(key, tag) for key, tag in tags if tag["word"]]
    for i, (key, tag) in enumerate(kept):
        text = record.text if key[0] == 0 else record.pair
        after = kept[i + 1][1]["start"] if i + 1 < len(kept) and kept[i + 1][0][0] == key[0] else len(text)
        end = tag["end"]
        while end < after and unicodedata.combining(text[end]):
            end += 1
        if end != tag["end"]:
            tag["end"], tag["word"] = end, text[tag["start"]:end]
    return kept


def _answer_span(text: str, begin: int, end: int) -> tuple[int, int]:
    """An answer's character span made whole: without the white space around it (a byte-level BPE's words carry
    the space, tab or no-break space before them: answers began with a tab, and "Paris" and " Paris" were two
    answers splitting one score), and with whole characters at its ends: one that begins on a combining mark (a
    byte-level BPE makes a decomposed accent its own word) starts at its word's first letter, and one followed by
    combining marks takes them and the rest of that word ("cr" + U+0300 + "me": "crème")."""
    while begin < end and text[begin].isspace():
        begin += 1
    while end > begin and text[end - 1].isspace():
        end -= 1
    if begin < end and unicodedata.combining(text[begin]):
        while begin > 0 and (unicodedata.combining(text[begin]) or text[begin - 1].isalnum()
                             or unicodedata.combining(text[begin - 1])):
            begin -= 1
    if begin < end < len(text) and unicodedata.combining(text[end]):
        while end < len(text) and (unicodedata.combining(text[end]) or text[end].isalnum()):
            end += 1
    return begin, end


def _cut(text: str, at: int, start: int = 0) -> int:
    """Where a long text is cut near character ``at`` (> ``start``), or -1 where no place is safe: at the first ASCII
    whitespace from ``at`` (no further on than as far again), else at the last one between ``start`` and ``at`` (in
    its second half), else, in a text without spaces (Chinese, a long URL or code, words joined by commas), just
    after the punctuation mark or CJK ideograph nearest ``at`` in that range: a text without spaces was tokenized
    whole, a pair of two such texts with the product of their truncation windows (3.3 GB, then killed, for two
    texts of 19,000 characters). Spaces, punctuation and CJK ideographs end a word for every tokenizer family's
    pre-tokenizer that splits there (WordPiece's words are never cut: one of more than its 100 characters is one
    [UNK], and a cut piece of it would be word pieces); where a pre-token is cut all the same (a byte-level BPE's run
    of ideographs, a SentencePiece text without spaces) its tokens near the cut may change, and the margin of tokens
    a prefix holds past those it keeps (``LONG_TEXT_MARGIN``) keeps the cut far from them. A run of letters alone
    (Thai, Japanese kana) has no safe place: -1, and the text is read whole as before."""
    found = _WHITESPACE.search(text, at, at + (at - start) + 1)
    if found:
        return found.start()
    before = max(text.rfind(c, start, at) for c in _SPACES)
    low = start + (at - start) // 2
    if before > low:
        return before
    high = min(len(text) - 1, at + (at - start))

    def ends_a_word(k: int) -> bool:   # a cut between text[k - 1] and text[k]
        # never inside a run of one character ("!!!!", a line of "="): a Unigram (SentencePiece) model segments a
        # run as a whole, and how depends on its length, so the cut changed tokens at the run's start
        return _word_boundary(text[k - 1]) and text[k] != text[k - 1] and not unicodedata.combining(text[k])

    for k in range(at, low, -1):
        if ends_a_word(k):
            return k
    for k in range(at + 1, high + 1):
        if ends_a_word(k):
            return k
    return -1


def _word_boundary(ch: str) -> bool:
    """Whether every pre-tokenizer that splits words ends one after ``ch``: ASCII punctuation and symbols, Unicode
    punctuation, CJK ideographs (BERT's pre-tokenizer splits at each; its normalizer isolates the ideographs)."""
    code = ord(ch)
    if code < 128:   # a control character is deleted by BERT's normalizer, joining its neighbours: no boundary
        return 32 < code < 127 and not ch.isalnum()
    return unicodedata.category(ch).startswith("P") or 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or \
        0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x2FA1F


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))   # 1 / (1 + exp(-x)), without overflow


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax along the last axis."""
    z = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
