"""Tokenizer files shared by the tokenizers bertc builds (:mod:`bertc.text`, :mod:`bertc.sentencepiece`): reading
their JSON files, and the tokens a checkpoint adds on top of a vocabulary file."""
from __future__ import annotations

import json
from pathlib import Path

from bertc.errors import InputError

# sentencepiece models: spiece.model (ALBERT, T5), spm.model (DeBERTa-v2/v3), sentencepiece.bpe.model (XLM-R,
# CamemBERT)
SENTENCEPIECE_FILES = ("spiece.model", "spm.model", "sentencepiece.bpe.model")
SENTENCE_BERT_CONFIG = "sentence_bert_config.json"   # sentence-transformers' own settings: do_lower_case
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", *SENTENCEPIECE_FILES, "vocab.json", "merges.txt",
                   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", SENTENCE_BERT_CONFIG)


def read_json(path: Path) -> dict:
    """A tokenizer's JSON file as a dict ({} when it is missing, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))   # as transformers reads it, whatever the locale
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


_TOKEN_FLAGS = ("lstrip", "rstrip", "single_word", "normalized")


def config_added_tokens(directory: Path, config: dict) -> list[tuple[int, str, dict]]:
    """The tokens a vocabulary file's tokenizer gets on top of it, as transformers adds them when it loads the
    directory: tokenizer_config.json's ``added_tokens_decoder`` (id -> the token's fields), else transformers 3's
    added_tokens.json (content -> id; special when special_tokens_map.json lists it among its special tokens).
    (id, content, fields) in id order; ``fields``: ``special`` and the matching options the file writes."""
    directory = Path(directory)
    written = config.get("added_tokens_decoder")
    if written is None:
        legacy = read_json(directory / "added_tokens.json")
        if not legacy:
            return []
        specials = read_json(directory / "special_tokens_map.json")
        named = set()
        for value in specials.values():
            for item in value if isinstance(value, list) else [value]:
                named.add(item.get("content") if isinstance(item, dict) else item)
        where = directory / "added_tokens.json"
        written = {}
        for content, index in legacy.items():
            if isinstance(index, bool) or not isinstance(index, int):
                raise InputError(f"{where}: {content!r} has id {json.dumps(index)}; added_tokens.json maps each "
                                 f"added token to a whole-number id")
            written[str(index)] = {"content": content, "special": content in named}
    else:
        where = directory / "tokenizer_config.json"
    if not isinstance(written, dict):
        raise InputError(f"{where}: added_tokens_decoder is {type(written).__name__}; transformers writes an object "
                         f"of id -> token")
    entries = []
    for index, entry in written.items():
        content = entry.get("content") if isinstance(entry, dict) else entry
        if not str(index).isdigit() or not isinstance(content, str) or not content:
            raise InputError(f"{where}: added token {json.dumps(index)}: {json.dumps(entry)} is not a token "
                             f"transformers adds (a whole-number id and a non-empty content string)")
        fields = {"special": bool(entry.get("special", False))} if isinstance(entry, dict) else {"special": True}
        if isinstance(entry, dict):
            fields.update({k: bool(entry[k]) for k in _TOKEN_FLAGS if entry.get(k) is not None})
        entries.append((int(index), content, fields))
    return sorted(entries)


def add_config_tokens(tokenizers, tok, directory: Path, config: dict, fields_of=None) -> None:
    """Add :func:`config_added_tokens` to ``tok`` as transformers does: a token the vocabulary lacks takes the next
    id, one it has keeps its id but is now matched whole, before the text is split (``<ent>`` stays one token); a
    token already added (the class's special tokens) keeps its options. Each must end at the id the file names,
    else :class:`InputError` (transformers' ids would not be bertc's). ``fields_of(content, fields)`` may replace
    a token's options (the default: as written, ``normalized`` where absent not ``special``, AddedToken's rule)."""
    entries = config_added_tokens(directory, config)
    known = tok.get_added_tokens_decoder()
    where = (f"{Path(directory) / 'tokenizer_config.json'}: added_tokens_decoder" if "added_tokens_decoder" in config
             else Path(directory) / "added_tokens.json")
    for index, content, fields in entries:
        if index in known and known[index].content == content:
            continue
        if fields_of is not None:
            fields = fields_of(content, fields)
        fields = {"normalized": not fields["special"], **fields}
        if tok.token_to_id(content) in (None, index):
            token = tokenizers.AddedToken(content, **fields)
            (tok.add_special_tokens if fields["special"] else tok.add_tokens)([token])
        if tok.token_to_id(content) != index:
            raise InputError(f"{where} puts {content!r} at id {index}, but the vocabulary gives it id "
                             f"{tok.token_to_id(content)}; transformers would not tokenize it as the model was "
                             f"trained")
