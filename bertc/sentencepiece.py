"""A tokenizer from a SentencePiece model file alone, as transformers builds it, for the ``tokenizers`` library.

DeBERTa-v2/v3's published checkpoints (microsoft/deberta-v3-base and its siblings) ship ``spm.model`` and no
``tokenizer.json``, as do ALBERT, XLM-RoBERTa and CamemBERT checkpoints saved before fast tokenizers
(``spiece.model``, ``sentencepiece.bpe.model``); transformers turns the SentencePiece model into a ``tokenizers``
pipeline when it loads them. bertc does the same here, so ``bertc run``, ``bertc parity --text`` and the int8
tuning's real sentences work on such a build too: :func:`read_model` decodes the model file's protobuf (the fields
transformers reads: the pieces with their scores and types, the trainer's model type and unknown id, the
normalizer's precompiled character map) without the ``sentencepiece`` or ``protobuf`` packages, and
:func:`tokenizer_for` builds what transformers 5's tokenizer class of the family builds from it (its vocabulary
order, normalizer, pre-tokenizer and special tokens: :data:`FAMILIES`). ``tests/test_sentencepiece.py`` compares
each with transformers' own on models made by ``tools/make_sentencepiece_fixture.py``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from bertc.errors import BertcError

UNIGRAM, BPE = 1, 2                 # TrainerSpec.model_type
NORMAL, CONTROL = 1, 3              # SentencePiece.type (2: unknown, 4: user-defined, 5: unused, 6: byte)


@dataclass
class Piece:
    piece: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class Model:
    """What a SentencePiece model file holds that a ``tokenizers`` pipeline needs."""
    pieces: list = field(default_factory=list)
    model_type: int = UNIGRAM
    unk_id: int = 0
    byte_fallback: bool = False
    precompiled_charsmap: bytes = b""


def _fields(data: bytes, where: str):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes for length-delimited
    fields, the 4 or 8 bytes of fixed-width ones."""
    i, n = 0, len(data)

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            if i >= n:
                raise BertcError(f"{where}: not a SentencePiece model (a truncated protobuf varint)")
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise BertcError(f"{where}: not a SentencePiece model (a protobuf varint longer than 10 bytes)")

    while i < n:
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, wire, varint()
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise BertcError(f"{where}: not a SentencePiece model (a protobuf field runs past the end)")
            yield number, wire, data[i:i + size]
            i += size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if i + size > n:
                raise BertcError(f"{where}: not a SentencePiece model (a protobuf field runs past the end)")
            yield number, wire, data[i:i + size]
            i += size
        else:
            raise BertcError(f"{where}: not a SentencePiece model (protobuf wire type {wire})")


def _signed(value: int) -> int:
    """An int32 field's value (negative numbers are 10-byte varints)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def read_model(path: Path) -> Model:
    """The SentencePiece model at ``path`` (a ``ModelProto``: sentencepiece_model.proto's field numbers)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BertcError(f"cannot read {path}: {exc}") from None
    where = str(path)
    model = Model()
    for number, wire, value in _fields(data, where):
        if number == 1 and wire == 2:            # pieces
            piece = Piece("")
            for n, w, v in _fields(value, where):
                if n == 1 and w == 2:
                    try:
                        piece.piece = v.decode("utf-8")
                    except UnicodeDecodeError:
                        raise BertcError(f"{where}: not a SentencePiece model (a piece is not UTF-8)") from None
                elif n == 2 and w == 5:
                    piece.score = struct.unpack("<f", v)[0]
                elif n == 3 and w == 0:
                    piece.type = v
            model.pieces.append(piece)
        elif number == 2 and wire == 2:          # trainer_spec
            for n, w, v in _fields(value, where):
                if n == 3 and w == 0:
                    model.model_type = v
                elif n == 35 and w == 0:
                    model.byte_fallback = bool(v)
                elif n == 40 and w == 0:
                    model.unk_id = _signed(v)
        elif number == 3 and wire == 2:          # normalizer_spec
            for n, w, v in _fields(value, where):
                if n == 2 and w == 2:
                    model.precompiled_charsmap = bytes(v)
    if not model.pieces:
        raise BertcError(f"{where}: not a SentencePiece model (no pieces)")
    return model


# model_type -> (the SentencePiece file transformers reads, its tokenizer class)
FAMILIES = {"deberta-v2": ("spm.model", "DebertaV2Tokenizer"), "albert": ("spiece.model", "AlbertTokenizer"),
            "xlm-roberta": ("sentencepiece.bpe.model", "XLMRobertaTokenizer"),
            "camembert": ("sentencepiece.bpe.model", "CamembertTokenizer")}


def _token(config: dict, key: str, default: str) -> str:
    value = config.get(key, default)
    if isinstance(value, dict):   # an AddedToken written out: {"content": ...}
        value = value.get("content", default)
    return str(value)


def _unigram(path: Path, model: Model):
    if model.model_type != UNIGRAM:
        raise BertcError(f"{path}: a SentencePiece model of type {model.model_type}; bertc reads Unigram models "
                         f"(type {UNIGRAM}) alone, as these families' tokenizers are")
    if model.byte_fallback:
        raise BertcError(f"{path}: a SentencePiece model with byte fallback, which these families' tokenizers do "
                         f"not have")


_OPTIONS = ("lstrip", "rstrip", "single_word", "normalized")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# each family's special tokens when its tokenizer config does not name them (transformers' defaults)
DEBERTA_TOKENS = dict(zip(_SPECIAL_KEYS, ("[CLS]", "[SEP]", "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")))
ALBERT_TOKENS = dict(zip(_SPECIAL_KEYS, ("[CLS]", "[SEP]", "<unk>", "[SEP]", "<pad>", "[CLS]", "[MASK]")))
FAIRSEQ_TOKENS = dict(zip(_SPECIAL_KEYS, ("<s>", "</s>", "<unk>", "</s>", "<pad>", "<s>", "<mask>")))


def _added_tokens(tokenizers, tok, path: Path, model: Model, defaults: dict, config: dict,
                  first: dict | None = None) -> None:
    """The special tokens (the config's, else the family's ``defaults``, in transformers' order: bos, eos, unk,
    sep, pad, cls, mask), then the model's control pieces, then the tokens the config adds at given ids
    (``added_tokens_decoder``), which must get those ids; a token not in the vocabulary takes the next id. A
    token's matching options (lstrip, rstrip, single_word, normalized) are the family's (``first``), then those the
    config writes with it."""
    options = {t: dict(o) for t, o in (first or {}).items()}
    decoder = config.get("added_tokens_decoder")
    written = [config.get(k) for k in _SPECIAL_KEYS] + (list(decoder.values()) if isinstance(decoder, dict) else [])
    for entry in written:
        if isinstance(entry, dict) and "content" in entry:
            options.setdefault(str(entry["content"]), {}).update(
                {k: bool(entry[k]) for k in _OPTIONS if k in entry})

    def added(content: str, special: bool = True):
        return tokenizers.AddedToken(content, special=special, **{"normalized": False, **options.get(content, {})})

    names = [_token(config, key, defaults[key]) for key in _SPECIAL_KEYS]
    names += [p.piece for p in model.pieces if p.type == CONTROL]
    tok.add_special_tokens([added(t) for t in dict.fromkeys(names)])
    from bertc.tokenizer_files import add_config_tokens

    # a token of added_tokens.json (no options written) is normalized unless special, as transformers adds it
    # (AddedToken(normalized=not special)): "Hello" of an ALBERT's is matched in "hello" after lower-casing
    add_config_tokens(tokenizers, tok, Path(path).parent, config,
                      lambda content, fields: {"normalized": not fields["special"], **options.get(content, {}),
                                               "special": fields["special"]})


def _finish(tok, path: Path, model: Model, config: dict, split: list, without_prefix: str, defaults: dict,
            first: dict | None = None):
    """The end of every family's pipeline: the pre-tokenizers ``split``, then the ``▁`` word prefix (always, or
    ``without_prefix`` when ``add_prefix_space`` is false); the special and added tokens (:func:`_added_tokens`);
    ``[CLS] A [SEP] B [SEP]`` with type ids 0 / 1 where the family's defaults have ``[CLS]``, else
    ``<s> A </s></s> B </s>``."""
    import tokenizers
    from tokenizers import pre_tokenizers, processors

    scheme = "always" if config.get("add_prefix_space", True) else without_prefix
    tok.pre_tokenizer = pre_tokenizers.Sequence([*split, pre_tokenizers.Metaspace(replacement="▁",
                                                                                   prepend_scheme=scheme)])
    tok.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    _added_tokens(tokenizers, tok, path, model, defaults, config, first=first)
    if defaults["cls_token"] == "[CLS]":
        cls, sep = _token(config, "cls_token", "[CLS]"), _token(config, "sep_token", "[SEP]")
        single, pair = f"{cls}:0 $A:0 {sep}:0", f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1"
    else:
        cls, sep = _token(config, "bos_token", "<s>"), _token(config, "eos_token", "</s>")
        single, pair = f"{cls} $A {sep}", f"{cls} $A {sep} {sep} $B {sep}"
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


def deberta_v2(path: Path, config: dict):
    """transformers' ``DebertaV2Tokenizer`` for the SentencePiece model at ``path`` and the tokenizer config
    ``config`` (tokenizer_config.json), as a ``tokenizers.Tokenizer``."""
    import tokenizers
    from tokenizers import Regex, normalizers, pre_tokenizers

    model = read_model(path)
    _unigram(path, model)
    unk = _token(config, "unk_token", "[UNK]")
    vocab = [(p.piece, p.score) for p in model.pieces]
    unk_id = vocab.index((unk, 0.0)) if (unk, 0.0) in vocab else model.unk_id
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    steps = [normalizers.Lowercase()] if config.get("do_lower_case", False) else []
    if model.precompiled_charsmap:
        steps += [normalizers.Precompiled(model.precompiled_charsmap), normalizers.Strip(left=False, right=True),
                  normalizers.Replace(Regex(r" {2,}"), " ")]
    else:
        steps += [normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                  normalizers.Strip(left=False, right=True)]
    tok.normalizer = normalizers.Sequence(steps)
    split = [pre_tokenizers.Punctuation(behavior="isolated")] if config.get("split_by_punct", False) else []
    return _finish(tok, path, model, config, split, "first", DEBERTA_TOKENS)


def albert(path: Path, config: dict):
    """transformers' ``AlbertTokenizer`` (the model's pieces in order, ``<unk>`` at id 1; quotes ````/'' made ",
    accents stripped unless ``keep_accents``, lowercased unless ``do_lower_case`` is false, the character map;
    ``[CLS] A [SEP] B [SEP]`` with type ids 0 / 1)."""
    import tokenizers
    from tokenizers import normalizers, pre_tokenizers

    model = read_model(path)
    _unigram(path, model)
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram([(p.piece, p.score) for p in model.pieces], unk_id=1,
                                                         byte_fallback=False))
    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if not config.get("keep_accents", False):
        steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if config.get("do_lower_case", True):
        steps.append(normalizers.Lowercase())
    if model.precompiled_charsmap:
        steps.append(normalizers.Precompiled(model.precompiled_charsmap))
    tok.normalizer = normalizers.Sequence(steps)
    return _finish(tok, path, model, config, [pre_tokenizers.WhitespaceSplit()], "never", ALBERT_TOKENS)


def _fairseq(path: Path, config: dict, head: list, tail_from: int, unk_id: int, mask_options: dict):
    """XLM-RoBERTa's and CamemBERT's tokenizer: fairseq's dictionary order (``head``, then the model's pieces from
    ``tail_from``, then ``<mask>``), only the character map as normalizer, ``<s> A </s></s> B </s>``."""
    import tokenizers
    from tokenizers import normalizers, pre_tokenizers

    model = read_model(path)
    _unigram(path, model)
    mask = _token(config, "mask_token", "<mask>")
    vocab = head + [(p.piece, p.score) for p in model.pieces[tail_from:]] + [(mask, 0.0)]
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    if model.precompiled_charsmap:
        tok.normalizer = normalizers.Precompiled(model.precompiled_charsmap)
    return _finish(tok, path, model, config, [pre_tokenizers.WhitespaceSplit()], "never", FAIRSEQ_TOKENS,
                   first={mask: mask_options})


def xlm_roberta(path: Path, config: dict):
    """transformers' ``XLMRobertaTokenizer``: ``<s> <pad> </s> <unk>``, the model's pieces from the fourth on (fairseq's
    offset of one), ``<mask>`` last."""
    head = [(_token(config, "bos_token", "<s>"), 0.0), (_token(config, "pad_token", "<pad>"), 0.0),
            (_token(config, "eos_token", "</s>"), 0.0), (_token(config, "unk_token", "<unk>"), 0.0)]
    return _fairseq(path, config, head, 3, 3, {})


def camembert(path: Path, config: dict):
    """transformers' ``CamembertTokenizer``: ``<s>NOTUSED <pad> </s>NOTUSED <unk> <unk>NOTUSED``, the model's pieces
    from the second on, ``<mask>`` last (matched with the space before it)."""
    unk = _token(config, "unk_token", "<unk>")
    head = [("<s>NOTUSED", 0.0), (_token(config, "pad_token", "<pad>"), 0.0), ("</s>NOTUSED", 0.0), (unk, 0.0),
            ("<unk>NOTUSED", -100.0)]
    return _fairseq(path, config, head, 1, 3, {"lstrip": True})


BUILDERS = {"deberta-v2": deberta_v2, "albert": albert, "xlm-roberta": xlm_roberta, "camembert": camembert}


def family_of(directory: Path, config: dict, model_type: str | None) -> str | None:
    """The family whose SentencePiece file is in ``directory`` alone, as transformers would pick its tokenizer:
    the tokenizer config's ``tokenizer_class``, else the checkpoint's ``model_type``; None when neither names one
    of :data:`FAMILIES` whose file is there."""
    named = str(config.get("tokenizer_class") or "")
    for family, (name, cls) in FAMILIES.items():
        if (named.startswith(cls) if named else model_type == family) and (Path(directory) / name).is_file():
            return family
    return None


def tokenizer_for(directory: Path, family: str, config: dict):
    """The ``tokenizers.Tokenizer`` of ``family`` (:data:`FAMILIES`) from its SentencePiece file in ``directory``."""
    return BUILDERS[family](Path(directory) / FAMILIES[family][0], config)
