"""A tokenizer from a SentencePiece model file alone, as transformers builds it, for the ``tokenizers`` library.

DeBERTa-v2/v3's published checkpoints (microsoft/deberta-v3-base and its siblings) ship ``spm.model`` and no
``tokenizer.json``; transformers turns the SentencePiece model into a ``tokenizers`` pipeline when it loads them.
bertc does the same here, so ``bertc run``, ``bertc parity --text`` and the int8 tuning's real sentences work on
such a build too: :func:`read_model` decodes the model file's protobuf (the fields transformers reads: the pieces
with their scores and types, the trainer's model type and unknown id, the normalizer's precompiled character
map) without the ``sentencepiece`` or ``protobuf`` packages, and :func:`deberta_v2` builds what transformers'
``DebertaV2Tokenizer`` builds from it (transformers 5: a Unigram model; lowercasing when the tokenizer config
says so; the character map, right strip and runs of spaces made one; punctuation split off when
``split_by_punct``; the ``▁`` word prefix; ``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]`` with type ids 0 / 1).
``tests/test_sentencepiece.py`` compares it with transformers' own tokenizer on a model trained by
``tools/make_sentencepiece_fixture.py``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from bertc.errors import BertcError

UNIGRAM, BPE = 1, 2                 # TrainerSpec.model_type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4   # SentencePiece.type


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
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True


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
                elif n == 3 and w == 0:
                    model.add_dummy_prefix = bool(v)
                elif n == 4 and w == 0:
                    model.remove_extra_whitespaces = bool(v)
    if not model.pieces:
        raise BertcError(f"{where}: not a SentencePiece model (no pieces)")
    return model


def deberta_v2(path: Path, config: dict):
    """transformers' ``DebertaV2Tokenizer`` for the SentencePiece model at ``path`` and the tokenizer config
    ``config`` (tokenizer_config.json), as a ``tokenizers.Tokenizer``."""
    import tokenizers
    from tokenizers import Regex, normalizers, pre_tokenizers, processors

    model = read_model(path)
    if model.model_type != UNIGRAM:
        raise BertcError(f"{path}: a SentencePiece model of type {model.model_type}; DeBERTa's tokenizer is a "
                         f"Unigram model (type {UNIGRAM})")
    if model.byte_fallback:
        raise BertcError(f"{path}: a SentencePiece model with byte fallback, which DeBERTa's tokenizer does not have")

    def token(key: str, default: str) -> str:
        value = config.get(key, default)
        if isinstance(value, dict):   # an AddedToken written out: {"content": ...}
            value = value.get("content", default)
        return str(value)

    cls, sep, unk = token("cls_token", "[CLS]"), token("sep_token", "[SEP]"), token("unk_token", "[UNK]")
    specials = [cls, sep, unk, token("pad_token", "[PAD]"), token("mask_token", "[MASK]"),
                token("bos_token", "[CLS]"), token("eos_token", "[SEP]")]
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
    scheme = "always" if config.get("add_prefix_space", True) else "first"
    tok.pre_tokenizer = pre_tokenizers.Sequence([*split, pre_tokenizers.Metaspace(replacement="▁",
                                                                                   prepend_scheme=scheme)])
    tok.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    # the model's control pieces, the config's special tokens, then the tokens the config adds at given ids
    added = [p.piece for p in model.pieces if p.type == CONTROL]
    added += [s for s in specials if s not in added]
    tok.add_special_tokens([tokenizers.AddedToken(s, normalized=False, special=True) for s in added])
    extra = config.get("added_tokens_decoder") or {}
    for index in sorted(extra, key=lambda k: int(k)):
        entry = extra[index]
        content = entry.get("content") if isinstance(entry, dict) else str(entry)
        if tok.token_to_id(content) is None:
            tok.add_special_tokens([tokenizers.AddedToken(
                content, normalized=bool(entry.get("normalized", False)) if isinstance(entry, dict) else False,
                special=bool(entry.get("special", True)) if isinstance(entry, dict) else True)])
        if tok.token_to_id(content) != int(index):
            raise BertcError(f"{Path(path).parent / 'tokenizer_config.json'}: added_tokens_decoder puts {content!r} "
                             f"at id {index}, but {Path(path).name} gives it id {tok.token_to_id(content)}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok
