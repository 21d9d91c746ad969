"""The tokenizer that belongs to a model: bundled into OUT, and used to turn real text into inputs.

``bundle_tokenizer`` copies the tokenizer files found beside the trained weights into the build
directory (so OUT is what a deployment needs) and returns the report's ``tokenizer`` section.
``encode_texts`` tokenizes text with the bundled tokenizer (the ``tokenizers`` library, optional
extra ``text``) into the model's int32 inputs, for parity and benchmarks on real inputs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from bertc.errors import DamagedBuild, InputError, MissingLibrary, OutputError
from bertc.tokenizer_files import add_config_tokens, read_json as _read_json

from bertc.tokenizer_files import SENTENCE_BERT_CONFIG, SENTENCEPIECE_FILES, TOKENIZER_FILES  # noqa: F401

# the files that are a tokenizer by themselves (the others configure one); RoBERTa's BPE is the vocab.json +
# merges.txt pair
VOCABULARIES = ("tokenizer.json", "vocab.txt", *SENTENCEPIECE_FILES, "vocab.json")
# the special tokens a RoBERTa-style tokenizer (BPE, or MPNet's WordPiece) wraps sequences in
_ROBERTA_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")


def _tokenizer_dir(source: Path) -> Path:
    """Where the tokenizer of the weights at ``source`` is: their directory, or for a sentence-transformers
    directory saved before v2 its transformer's folder (``0_Transformer/``, ``0_BERT/``)."""
    from bertc.checkpoints import transformer_folder

    directory = source if source.is_dir() else source.parent
    folder = transformer_folder(directory)
    if folder is not None and folder.is_dir() and not any((directory / n).is_file() for n in VOCABULARIES):
        return folder
    return directory


ST_CONFIG = "config_sentence_transformers.json"


def read_prompts(config: dict) -> tuple[dict[str, str], Optional[str]]:
    """(the prompts, by name, and ``default_prompt_name``) of a sentence-transformers config
    (``config_sentence_transformers.json``: e5's "query: " / "passage: ", bge's retrieval instruction); prompts that
    are not strings are left out."""
    found = config.get("prompts")
    prompts = {str(k): v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}
    default = config.get("default_prompt_name")
    return prompts, (str(default) if default is not None else None)


def bundled_prompts(out_dir: Path) -> tuple[dict[str, str], Optional[str]]:
    """:func:`read_prompts` of the sentence-transformers config bundled in ``out_dir`` (none without one)."""
    return read_prompts(_read_json(Path(out_dir) / ST_CONFIG))


def model_max_length(value) -> Optional[int]:
    """A tokenizer_config.json ``model_max_length`` as a length, or None where it is none or transformers' "no
    limit" (a huge number, 1e30 as saved)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000 else None


def describe_tokenizer(directory: Path, files: Sequence[str]) -> dict:
    config = _read_json(directory / "tokenizer_config.json") if "tokenizer_config.json" in files else {}
    if "tokenizer.json" in files:
        kind = "tokenizers (tokenizer.json)"
    elif "vocab.txt" in files:
        kind = "WordPiece (vocab.txt)"
    elif "vocab.json" in files:
        kind = "byte-level BPE (vocab.json + merges.txt)"
    else:
        kind = f"SentencePiece ({next(n for n in files if n in SENTENCEPIECE_FILES)})"
    section = {"files": list(files), "kind": kind}
    for key in ("tokenizer_class", "do_lower_case", "model_max_length"):
        if key in config:
            section[key] = config[key]
    if SENTENCE_BERT_CONFIG in files and lowercases_input(directory):
        section["lowercase_input"] = "sentence_bert_config.json do_lower_case: the text is lowercased first"
    return section


def lowercased(text):
    """A text (or a (text, pair) tuple) as sentence-transformers lowercases it: ``str.lower()``, whose final sigma
    rule (ΟΔΥΣΣΕΥΣ -> οδυσσευς) the tokenizers library's character-wise Lowercase normalizer lacks."""
    return text.lower() if isinstance(text, str) else tuple(t.lower() for t in text)


def lowercases_input(directory: Path) -> bool:
    """Whether sentence-transformers lowercases the text before its tokenizer sees it (``do_lower_case`` in
    ``sentence_bert_config.json``, up to sentence-transformers 5; ``str.lower()`` of each text)."""
    return _read_json(Path(directory) / SENTENCE_BERT_CONFIG).get("do_lower_case") is True


def check_tokenizer(source: Path) -> Optional[tuple[Path, list[str]]]:
    """(the directory, the names) of the tokenizer files beside the weights at ``source``, each checked as
    :func:`_check_tokenizer_file` checks it (:class:`WeightsError` naming a damaged one); None when there is no
    vocabulary among them."""
    directory = _tokenizer_dir(Path(source))
    files = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not any(name in files for name in VOCABULARIES):
        return None
    for name in files:
        _check_link(directory / name, directory)
        _check_tokenizer_file(directory / name)
    return directory, files


def bundle_tokenizer(source: Path, out: Path) -> Optional[dict]:
    """Copy the tokenizer files beside ``source`` into ``out``; the report section, or None if there are none."""
    found = check_tokenizer(source)   # all checked before any is copied: a damaged file is said now, not by bertc run
    if found is None:
        return None
    directory, files = found
    for name in files:
        try:
            shutil.copyfile(directory / name, Path(out) / name)
        except OSError as exc:
            raise OutputError(f"cannot copy the tokenizer file {directory / name} into the build: {exc}") from None
    from bertc.weights import spec_text

    section = {"source": spec_text(str(directory.resolve())), **describe_tokenizer(directory, files)}
    try:   # a tokenizer bertc does not build exactly is said now, in the report (naming the checkpoint's files)
        vocabulary_kind(directory, _read_json(directory / "tokenizer_config.json"),
                        _model_type(Path(out)) or _model_type(directory))
    except InputError as exc:
        section["unsupported"] = f"{exc}; bertc run and parity on text refuse it"
    return section


# the tokenizer files that are JSON objects (each is read as one; a vocab.json is token -> id)
JSON_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              SENTENCE_BERT_CONFIG)


def _check_link(path: Path, directory: Path) -> None:
    """Refuse a tokenizer file that is a link to a file a tokenizer's name does not hold
    (:func:`bertc.checkpoints.check_link`)."""
    from bertc.checkpoints import check_link

    check_link(path, directory, "tokenizer file")


def _check_tokenizer_file(path: Path) -> None:
    """Refuse (:class:`WeightsError`, naming it) a checkpoint's tokenizer file (a link's target, once
    :func:`_check_link` let it through) that would make a build ``bertc run`` cannot read: a JSON file that is not
    a JSON object (empty, binary, truncated), a tokenizer.json the tokenizers library cannot load, a vocab.txt / merges.txt that is not UTF-8 text, a SentencePiece file that is
    not a model. Called before anything is copied."""
    from bertc.errors import BertcError, WeightsError, git_lfs_pointer

    name = path.name
    pointer = git_lfs_pointer(path)
    if pointer:
        raise WeightsError(f"{path}: {pointer}")
    if name in SENTENCEPIECE_FILES:
        from bertc.sentencepiece import read_model

        try:
            read_model(path)
        except BertcError as exc:   # its message names the file
            raise WeightsError(str(exc)) from None
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read the tokenizer file: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WeightsError(f"{path}: the tokenizer file is not UTF-8 text (byte {exc.start} is not UTF-8): it is "
                           f"damaged or not {name}; restore it from where the checkpoint came from") from None
    if name not in JSON_FILES:
        if name == "vocab.txt" and not text.strip():
            raise WeightsError(f"{path}: the tokenizer file is empty: a WordPiece vocabulary has one token a line")
        return
    from bertc.checkpoints import json_loads

    try:
        value = json_loads(text)
    except ValueError as exc:
        what = "empty" if not text.strip() else f"not JSON ({exc})"
        raise WeightsError(f"{path}: the tokenizer file is {what}: it is damaged or not {name}; restore it from "
                           f"where the checkpoint came from") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: the tokenizer file holds a JSON {type(value).__name__}, not an object as "
                           f"{name} does")
    if name == "tokenizer.json":
        try:
            import tokenizers
        except ImportError:   # read when it is used (calibration is then skipped, bertc run says what to install)
            return
        try:
            tokenizers.Tokenizer.from_str(text)
        except Exception as exc:   # the tokenizers library raises plain Exceptions for what it cannot read
            raise WeightsError(f"{path}: not a tokenizer the tokenizers library can load: "
                               f"{' '.join(str(exc).split())[:300]}") from None


def _load_tokenizer_json(tokenizers, path: Path):
    """The ``tokenizers.Tokenizer`` of a build's tokenizer.json, read here rather than by the library: a path that
    is not UTF-8 in the file system's encoding (a non-ASCII OUT under the C locale) cannot be passed to it, and a
    damaged file is a damaged build (:class:`InputError`, naming the file), not an internal error."""
    try:
        text = path.read_bytes().decode("utf-8")
        return tokenizers.Tokenizer.from_str(text)
    except Exception as exc:   # OSError, UnicodeDecodeError, the tokenizers library's plain Exception
        raise DamagedBuild(f"{path.parent}: not a readable bertc build (its tokenizer, {path}: "
                         f"{' '.join(str(exc).split())[:300]}); rebuild it, or restore the file") from None


def _library_path(path: Path):
    """A context giving ``path`` as a string the tokenizers library accepts: itself, or where it cannot be passed
    to the library (not UTF-8 in the file system's encoding: a non-ASCII path under the C locale), a copy of the
    file under a temporary ASCII name."""
    import contextlib
    import tempfile

    @contextlib.contextmanager
    def context():
        text = str(path)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            with tempfile.TemporaryDirectory(prefix="bertc-tok-") as tmp:
                copy = Path(tmp) / ("file" + "".join(c for c in path.suffix if c.isascii()))
                shutil.copyfile(path, copy)
                yield str(copy)
            return
        yield text

    return context()


def require_tokenizers():
    """The tokenizers library, imported; :class:`MissingLibrary` (exit 7) when it is not installed or older than
    bertc supports."""
    try:
        import tokenizers
    except ImportError:
        from bertc.requirements import pip_install

        raise MissingLibrary(f"real-text inputs need the tokenizers library: {pip_install('text')}") from None
    from bertc.requirements import require_version

    require_version(tokenizers, "tokenizers", "text")
    return tokenizers


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def tokenizer_settings(directory: Path) -> dict:
    """tokenizer_config.json, the special tokens it does not name taken from special_tokens_map.json, as
    transformers' ``from_pretrained`` gathers them (the transformers 4 layout: the special tokens in
    special_tokens_map.json alone, tokenizer_config.json holding ``do_lower_case`` and ``model_max_length``: a
    vocab.txt whose ``[CLS]`` is ``<cls>`` was read with ``[CLS]``, and the build could not run)."""
    config = _read_json(Path(directory) / "tokenizer_config.json")
    named = _read_json(Path(directory) / "special_tokens_map.json")
    missing = {k: named[k] for k in SPECIAL_TOKEN_KEYS if k in named and not config.get(k)
               and isinstance(named[k], (str, dict))}
    return {**config, **missing} if missing else config


def load_tokenizer(out_dir: Path, max_len: int):
    """A ``tokenizers.Tokenizer`` for the files in ``out_dir``, truncating to ``max_len``."""
    out_dir = Path(out_dir)
    config = tokenizer_settings(out_dir)
    model_type = _model_type(out_dir)
    # a build without a tokenizer says so before asking for the library (installing it would not help)
    kind, family = vocabulary_kind(out_dir, config, model_type)
    tokenizers = require_tokenizers()
    if kind == "tokenizer.json":
        tok = _load_tokenizer_json(tokenizers, out_dir / "tokenizer.json")
        named = tokenizer_class(config, model_type)
        if named in BERT_NORMALIZED:
            _config_normalizer(tokenizers, tok, config, out_dir)
        elif named in BYTE_LEVEL_OFFSETS:
            _config_offsets(tokenizers, tok, config)
        # the tokens transformers adds on top of tokenizer.json: tokenizer_config.json's added_tokens_decoder, or an
        # added_tokens.json beside it (a fine-tune's, beside the base model's tokenizer.json: "<ent>" was split)
        add_config_tokens(tokenizers, tok, out_dir, config)
    elif kind == "bpe":
        tok = _byte_level_bpe(tokenizers, out_dir, config)
        add_config_tokens(tokenizers, tok, out_dir, config)
    elif kind == "wordpiece":
        tok = _wordpiece(tokenizers, out_dir, config, family)
        add_config_tokens(tokenizers, tok, out_dir, config)
    else:
        from bertc.sentencepiece import tokenizer_for

        tok = tokenizer_for(out_dir, family, config)
    if lowercases_input(out_dir):   # before the tokenizer's own normalization, as sentence-transformers does
        # (the callers lowercase each text with str.lower() first, as sentence-transformers does: Lowercase maps one
        # character at a time, so a word's final capital sigma became σ, not ς; here for whoever else encodes)
        lower = tokenizers.normalizers.Lowercase()
        tok.normalizer = lower if tok.normalizer is None else tokenizers.normalizers.Sequence([lower, tok.normalizer])
    # (tokenizers' implementations, as the byte-level BPE, wrap a Tokenizer whose truncation takes a direction)
    getattr(tok, "_tokenizer", tok).enable_truncation(max_length=max_len, direction=truncation_side(out_dir, config))
    tok.no_padding()
    return tok


def truncation_side(directory: Path, config: dict) -> str:
    """tokenizer_config.json's ``truncation_side``: which end of an over-long text transformers' tokenizers (and
    sentence-transformers through them) cut, ``right`` unless it says ``left``. A tokenizer.json's own truncation
    is not what they use: they set it from this on every call."""
    side = config.get("truncation_side", "right")
    if side not in ("left", "right"):
        raise InputError(f"{Path(directory) / 'tokenizer_config.json'}: truncation_side {json.dumps(side)} is "
                         f"neither \"right\" nor \"left\" (transformers refuses it too)")
    return side


# model_type -> the tokenizer class transformers' AutoTokenizer picks for a checkpoint whose tokenizer_config.json
# names none (of the families bertc imports)
CLASS_OF_MODEL_TYPE = {"bert": "BertTokenizer", "distilbert": "DistilBertTokenizer", "electra": "ElectraTokenizer",
                       "mpnet": "MPNetTokenizer", "roberta": "RobertaTokenizer", "xlm-roberta": "XLMRobertaTokenizer",
                       "camembert": "CamembertTokenizer", "albert": "AlbertTokenizer",
                       "deberta-v2": "DebertaV2Tokenizer", "modernbert": "PreTrainedTokenizerFast"}
# the classes whose tokenizer (transformers 4's fast one, transformers 5's) puts tokenizer_config.json's
# do_lower_case, strip_accents and tokenize_chinese_chars (or their defaults) into tokenizer.json's BertNormalizer
BERT_NORMALIZED = ("BertTokenizer", "DistilBertTokenizer", "ElectraTokenizer", "MPNetTokenizer", "FunnelTokenizer",
                   "LayoutLMTokenizer", "SqueezeBertTokenizer", "MobileBertTokenizer")


def _model_type(directory: Path) -> Optional[str]:
    """The checkpoint's model_type: its config.json as a build bundles it (checkpoint_config.json), or beside the
    tokenizer in a transformers directory."""
    from bertc.checkpoints import CHECKPOINT_CONFIG

    for name in (CHECKPOINT_CONFIG, "config.json"):
        found = _read_json(Path(directory) / name).get("model_type")
        if found is not None:
            return str(found)
    return None


def tokenizer_class(config: dict, model_type: Optional[str]) -> Optional[str]:
    """The tokenizer class transformers' AutoTokenizer loads: tokenizer_config.json's ``tokenizer_class`` (a
    "...Fast" name is the same tokenizer), else the one of the checkpoint's model_type; None when neither says."""
    named = config.get("tokenizer_class")
    if named:
        named = str(named)
        return named[:-len("Fast")] if named.endswith("TokenizerFast") else named
    return CLASS_OF_MODEL_TYPE.get(model_type) if model_type else None


# the tokenizer classes that transformers 4.57 or 5.25 builds from their Python code alone (no "...Fast" twin in 4,
# not a TokenizersBackend in 5): given one, AutoTokenizer never reads a tokenizer.json beside it
PYTHON_ONLY = frozenset((
    "BartphoTokenizer", "BertGenerationTokenizer", "BertJapaneseTokenizer", "BertweetTokenizer", "BioGptTokenizer",
    "BlenderbotSmallTokenizer", "ByT5Tokenizer", "CTRLTokenizer", "CanineTokenizer", "ClvpTokenizer",
    "CpmAntTokenizer", "CpmTokenizer", "DiaTokenizer", "ErnieMTokenizer", "EsmTokenizer", "FSMTTokenizer",
    "FlaubertTokenizer", "GPTNeoXJapaneseTokenizer", "GPTSanJapaneseTokenizer", "GPTSw3Tokenizer", "JukeboxTokenizer",
    "LukeTokenizer", "M2M100Tokenizer", "MLukeTokenizer", "MarianTokenizer", "MgpstrTokenizer", "MyT5Tokenizer",
    "PLBartTokenizer", "ParakeetCTCTokenizer", "PerceiverTokenizer", "PhobertTokenizer", "ProphetNetTokenizer",
    "RagTokenizer", "RoCBertTokenizer", "SiglipTokenizer", "Speech2Text2Tokenizer", "Speech2TextTokenizer",
    "SpeechT5Tokenizer", "TapasTokenizer", "TapexTokenizer", "TransfoXLTokenizer", "VitsTokenizer",
    "Wav2Vec2CTCTokenizer", "Wav2Vec2PhonemeCTCTokenizer", "XLMProphetNetTokenizer", "XLMTokenizer"))
# the tokenizer classes bertc builds from a vocabulary file alone, as transformers does (its "...Fast" twin of each is
# the same tokenizer), and what from: class -> WordPiece family (vocab.txt), the byte-level BPE (vocab.json +
# merges.txt); the SentencePiece families: bertc.sentencepiece.FAMILIES
WORDPIECE_CLASSES = {"BertTokenizer": "bert", "DistilBertTokenizer": "bert", "ElectraTokenizer": "bert",
                     "MPNetTokenizer": "mpnet"}
BPE_CLASSES = ("RobertaTokenizer",)
SUPPORTED = ("without tokenizer.json, bertc builds BertTokenizer, DistilBertTokenizer, ElectraTokenizer and "
             "MPNetTokenizer from vocab.txt, RobertaTokenizer from vocab.json + merges.txt, DebertaV2Tokenizer from "
             "spm.model, AlbertTokenizer from spiece.model, XLMRobertaTokenizer and CamembertTokenizer from "
             "sentencepiece.bpe.model (each also by its ...Fast name), and with one it reads any tokenizer.json "
             "(transformers writes it: AutoTokenizer.from_pretrained(dir).save_pretrained(dir), for a class with a "
             "fast tokenizer)")


def vocabulary_kind(directory: Path, config: dict, model_type: Optional[str]) -> tuple[str, Optional[str]]:
    """How bertc builds the tokenizer whose files are in ``directory`` (``config``: its tokenizer_config.json;
    ``model_type``: the checkpoint's), as transformers' AutoTokenizer picks it: ("tokenizer.json", None),
    ("wordpiece", "bert" | "mpnet"), ("bpe", None) or ("sentencepiece", family). The tokenizer class (tokenizer_config
    .json's, else the model type's: :func:`tokenizer_class`) decides which vocabulary file is read, and how; where
    neither names one (an original TF1 BERT's vocab.txt), the files do. Raises :class:`InputError` for a tokenizer
    bertc does not build exactly (BertJapaneseTokenizer's vocab.txt, a model type whose tokenizer needs another
    file): its tokens would not be transformers'."""
    from bertc.sentencepiece import family_of

    directory = Path(directory)
    present = [name for name in VOCABULARIES if (directory / name).is_file()]
    if "tokenizer.json" in present:
        named = config.get("tokenizer_class")
        if isinstance(named, str) and tokenizer_class(config, model_type) in PYTHON_ONLY:
            raise InputError(f"{directory / 'tokenizer_config.json'}: tokenizer_class {json.dumps(named)} has no fast "
                             f"tokenizer in transformers: AutoTokenizer ignores tokenizer.json and tokenizes with "
                             f"that class's own Python code, which bertc does not reproduce (its tokens would not be "
                             f"transformers')")
        return "tokenizer.json", None
    if not present:
        raise InputError(f"{directory}: no tokenizer in this build (tokenizer.json, vocab.txt, vocab.json + "
                         f"merges.txt, or a sentencepiece {' / '.join(SENTENCEPIECE_FILES)}): a build bundles the "
                         f"one beside its trained weights (put the checkpoint's tokenizer files there and build "
                         f"again), or that of the build it starts from (bertc build --init-from OUT)")
    cls = tokenizer_class(config, model_type)
    if cls is None:   # neither tokenizer_config.json nor a model type bertc knows says: the files do
        if "vocab.json" in present:
            return "bpe", None
        if "vocab.txt" in present:
            return "wordpiece", "bert"
    elif cls in WORDPIECE_CLASSES and "vocab.txt" in present:
        return "wordpiece", WORDPIECE_CLASSES[cls]
    elif cls in BPE_CLASSES and "vocab.json" in present:
        return "bpe", None
    family = family_of(directory, config, model_type)
    if family is not None:
        return "sentencepiece", family
    files = " and ".join(present)
    named = config.get("tokenizer_class")
    if named:
        head = (f"{directory / 'tokenizer_config.json'}: tokenizer_class {json.dumps(named)} is a tokenizer bertc "
                f"does not build from {files}: its tokens would not be transformers'")
    elif cls is not None:
        head = (f"{directory}: tokenizer_config.json names no tokenizer_class, and for the checkpoint's model_type "
                f"{json.dumps(model_type)} transformers loads {cls}, which bertc does not build from {files}")
    else:
        head = (f"{directory}: only {files} is bundled, and neither tokenizer_config.json's tokenizer_class nor the "
                f"checkpoint's model_type names a family bertc reads it for")
    raise InputError(f"{head}; {SUPPORTED}")


# the classes whose fast tokenizer (transformers 4's RobertaTokenizerFast; transformers 5's class) puts
# tokenizer_config.json's add_prefix_space and trim_offsets into tokenizer.json's ByteLevel pre-tokenizer and
# post-processor
BYTE_LEVEL_OFFSETS = ("RobertaTokenizer",)


def _config_offsets(tokenizers, tok, config: dict) -> None:
    """As RobertaTokenizerFast loads a tokenizer.json: tokenizer_config.json's ``add_prefix_space`` and
    ``trim_offsets``, or the class's defaults (false, true) where it names none (transformers 4's fast class and 5's
    class both do), replace those of its pre-tokenizer and post-processor (a config's ``add_prefix_space: true``
    was ignored: every text's first word tokenized without the space transformers puts before it)."""
    given = {k: config[k] if isinstance(config.get(k), bool) else default
             for k, default in (("add_prefix_space", False), ("trim_offsets", True))}
    if tok.pre_tokenizer is not None:
        state = json.loads(tok.pre_tokenizer.__getstate__())
        if state.get("add_prefix_space", given["add_prefix_space"]) != given["add_prefix_space"]:
            kind = state.pop("type")
            state["add_prefix_space"] = given["add_prefix_space"]
            tok.pre_tokenizer = getattr(tokenizers.pre_tokenizers, kind)(**state)
    if tok.post_processor is not None:
        state = json.loads(tok.post_processor.__getstate__())
        changed = {k: v for k, v in given.items() if k in state and state[k] != v}
        if changed:
            kind = state.pop("type")
            state.update(changed)
            ends = [tuple(state.pop(key)) for key in ("sep", "cls") if key in state]   # (RobertaProcessing's,
            # positional)
            tok.post_processor = getattr(tokenizers.processors, kind)(*ends, **state)


def _config_normalizer(tokenizers, tok, config: dict, where: Path) -> None:
    """As transformers' BERT-like tokenizer classes load a tokenizer.json: tokenizer_config.json's ``do_lower_case``,
    ``strip_accents`` and ``tokenize_chinese_chars`` (their defaults where absent: :func:`_normalizer_options`)
    replace those of its ``BertNormalizer`` (its ``clean_text`` stays)."""
    if tok.normalizer is None:
        return
    state = json.loads(tok.normalizer.__getstate__())
    if state.get("type") != "BertNormalizer":
        return
    options = _normalizer_options(config, where)
    if any(state.get(k) != v for k, v in options.items()):
        tok.normalizer = tokenizers.normalizers.BertNormalizer(clean_text=bool(state.get("clean_text", True)),
                                                               **options)


def _normalizer_options(config: dict, where: Path) -> dict:
    """The ``BertNormalizer`` options of transformers' BERT-like tokenizer classes from tokenizer_config.json:
    ``do_lower_case`` (default true), ``strip_accents`` (default null: strip where lowercasing) and
    ``tokenize_chinese_chars`` (default true: a space around every CJK character)."""
    options = {"lowercase": config.get("do_lower_case", True), "strip_accents": config.get("strip_accents"),
               "handle_chinese_chars": config.get("tokenize_chinese_chars", True)}
    for (option, value), key in zip(options.items(), ("do_lower_case", "strip_accents", "tokenize_chinese_chars")):
        if not isinstance(value, bool) and not (option == "strip_accents" and value is None):
            raise InputError(f"{where / 'tokenizer_config.json'}: {key} is {json.dumps(value)}; transformers' "
                             f"tokenizer takes true or false{' or null' if option == 'strip_accents' else ''}")
    return options


# the special tokens of the WordPiece tokenizers (transformers' defaults, where tokenizer_config.json names none),
# in transformers' order
_WORDPIECE_SPECIALS = {
    "bert": {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
             "mask_token": "[MASK]"},
    "mpnet": {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "[UNK]",
              "pad_token": "<pad>", "mask_token": "<mask>"}}


def _wordpiece(tokenizers, out_dir: Path, config: dict, family: str):
    """transformers' WordPiece tokenizer of ``family`` from vocab.txt, as its class builds it: ``BertNormalizer``
    with tokenizer_config.json's options (:func:`_normalizer_options`), ``BertPreTokenizer``, the special tokens
    found in the vocabulary; BERT's ``[CLS] A [SEP] B [SEP]`` (type ids 0 / 1) or MPNet's ``<s> A </s></s> B </s>``
    (type ids 0, ``<mask>`` taking the space before it)."""
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

    from bertc.sentencepiece import _token

    path = out_dir / "vocab.txt"
    options = _normalizer_options(config, out_dir)
    specials = {key: _token(config, key, default) for key, default in _WORDPIECE_SPECIALS[family].items()}
    try:
        with _library_path(path) as readable:
            vocab = models.WordPiece.read_file(readable)
    except Exception as exc:   # the tokenizers library raises plain Exceptions for unreadable files
        raise InputError(f"{path}: cannot read it as a WordPiece vocabulary: {exc}") from None
    for key in ("cls_token", "sep_token"):
        if specials[key] not in vocab:
            raise InputError(f"{path}: not a WordPiece vocabulary bertc can use: it has no {specials[key]!r}, the "
                             f"{key} that {'MPNetTokenizer' if family == 'mpnet' else 'BertTokenizer'} wraps every "
                             f"text in")
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=specials["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, **options)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    lstrip = {specials["mask_token"]} if family == "mpnet" else set()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=t in lstrip)
                            for t in dict.fromkeys(specials.values()) if t in vocab])
    cls, sep = (specials["cls_token"], vocab[specials["cls_token"]]), (specials["sep_token"], vocab[specials["sep_token"]])
    tok.post_processor = (processors.RobertaProcessing(sep, cls, trim_offsets=True, add_prefix_space=False)
                          if family == "mpnet" else processors.BertProcessing(sep, cls))
    return tok


def _roberta_specials(tokenizers, tok, vocab: dict, where: Path, **offsets) -> None:
    """RoBERTa's special tokens and post-processor (``<s> A </s></s> B </s>``, every type id 0); ``offsets``:
    its ``trim_offsets`` / ``add_prefix_space``, which decide whether a word's offsets take the space before it."""
    missing = [t for t in ("<s>", "</s>") if t not in vocab]
    if missing:
        raise InputError(f"{where}: has no {' / '.join(missing)} token, which a RoBERTa-style tokenizer wraps "
                         f"sequences in")
    # as RobertaTokenizer adds them: <mask> takes the space before it ("the <mask>" is "the" and <mask>, no "Ġ")
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False, lstrip=t == "<mask>")
                            for t in _ROBERTA_SPECIALS if t in vocab])
    tok.post_processor = tokenizers.processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]),
                                                                 **offsets)


def _byte_level_bpe(tokenizers, out_dir: Path, config: dict):
    """RoBERTa's tokenizer from vocab.json + merges.txt, as transformers' RobertaTokenizer builds it."""
    if not (out_dir / "merges.txt").exists():
        raise InputError(f"{out_dir}: vocab.json is bundled without merges.txt; a byte-level BPE needs both")
    # as RobertaTokenizerFast builds it: the same two settings in the pre-tokenizer and the post-processor (the
    # post-processor's own defaults, add_prefix_space=True, would give a text's first word and a window's first
    # token the space before them)
    offsets = {"add_prefix_space": bool(config.get("add_prefix_space", False)),
               "trim_offsets": bool(config.get("trim_offsets", True))}
    try:
        with _library_path(out_dir / "vocab.json") as vocab, _library_path(out_dir / "merges.txt") as merges:
            tok = tokenizers.ByteLevelBPETokenizer(vocab, merges, **offsets)
    except Exception as exc:   # the tokenizers library raises plain Exceptions for unreadable files
        raise InputError(f"{out_dir}: cannot read vocab.json / merges.txt as a byte-level BPE: {exc}") from None
    _roberta_specials(tokenizers, tok, tok.get_vocab(), out_dir / "vocab.json", **offsets)
    return tok


# the most a text file of examples (--text, --calibration) may hold, and one line of it: generous for text to tokenize
# (a model reads at most a few thousand tokens of a line), and a bound for a file that never ends (/dev/zero, a pipe)
MAX_TEXT_FILE_BYTES = 256 << 20
MAX_TEXT_LINE_BYTES = 1 << 20


def _read_bounded(path: Path) -> bytes:
    """The bytes of the text file at ``path``, read chunk by chunk; :class:`InputError` as soon as it is longer than
    :data:`MAX_TEXT_FILE_BYTES`, or a line than :data:`MAX_TEXT_LINE_BYTES` (rather than reading on until memory
    runs out)."""
    chunks, total, line = [], 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
            if total > MAX_TEXT_FILE_BYTES:
                raise InputError(f"{path}: the text file is larger than {MAX_TEXT_FILE_BYTES >> 20} MiB, the most "
                                 f"bertc reads for examples (one a line): give a sample of it")
            ends = [i for i in (chunk.find(b"\n"), chunk.find(b"\r")) if i >= 0]
            first = min(ends) if ends else len(chunk)
            if line + first > MAX_TEXT_LINE_BYTES:
                raise InputError(f"{path}: a line longer than {MAX_TEXT_LINE_BYTES >> 20} MiB (from byte "
                                 f"{total - len(chunk) - line:,}), the most bertc reads for one example: is it a "
                                 f"text file, one example a line?")
            last = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            line = len(chunk) - last - 1 if last >= 0 else line + len(chunk)
            chunks.append(chunk)
    return b"".join(chunks)


TEXT_FIELD, PAIR_FIELD = "text", "text_pair"   # the fields of a JSONL / CSV / TSV / Parquet file of examples


def _read_records(path: Path, fmt: str) -> list:
    """The examples of a JSONL, CSV, TSV or Parquet file, read as ``bertc run`` reads its input (its rules and its
    messages, naming the line or row): the field ``text``, and ``text_pair`` (transformers' name for a pair's second
    text) where the file has that field."""
    import dataclasses
    import os
    import stat

    from bertc.run_io import columns, input_spec, read_records

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InputError(f"{path}: not a regular file: give a {fmt} file of examples")
        if os.path.getsize(path) > MAX_TEXT_FILE_BYTES:
            raise InputError(f"{path}: the file is larger than {MAX_TEXT_FILE_BYTES >> 20} MiB, the most bertc reads "
                             f"for examples: give a sample of it")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {fmt} file: {exc}") from None
    spec = input_spec(path, fmt)
    pair = PAIR_FIELD if PAIR_FIELD in columns(spec) else None
    fixed = f"examples are read from the field {TEXT_FIELD!r}, and {PAIR_FIELD!r} for a pair's second text"
    records = read_records(dataclasses.replace(spec, text_field=TEXT_FIELD, pair_field=pair, choose=fixed))
    texts = [r.text if r.pair is None else (r.text, r.pair) for r in records]
    if not texts:
        raise InputError(f"{path}: no examples (a {fmt} file of examples: the field {TEXT_FIELD!r}, and "
                         f"{PAIR_FIELD!r} for a pair's second text)")
    return texts


def read_texts(path: Path) -> list:
    """The examples of a text file: one per non-empty line, a tab separating a sentence pair; or of a JSONL, CSV,
    TSV or Parquet file (by its suffix, as ``bertc run`` reads its input): the field ``text`` and, where the file
    has it, ``text_pair``. A .txt's lines end where ``bertc run``'s .txt lines end (LF, CRLF or a lone CR; not at
    the other characters ``str.splitlines`` ends a line at: U+2028, \\x0c, ..., which are text), and a text or pair
    left empty by the tab is refused, naming its line, as ``bertc run`` refuses it (transformers would encode
    "abc<TAB>" as "abc" alone, bertc encoded a pair with an empty second text)."""
    import re

    from bertc.run_io import INPUT_FORMATS

    fmt = INPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt not in (None, "txt"):   # a .jsonl was read as lines of text: '{"text": "..."}' tokenized as it stands
        return _read_records(Path(path), fmt)
    try:
        content = _read_bounded(Path(path)).decode("utf-8-sig")   # a byte-order mark is no part of the first text
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the text file: {exc}") from None
    texts = []
    for n, line in enumerate(re.split(r"\r\n|\r|\n", content), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            texts.append(line)
            continue
        text, _, pair = line.partition("\t")
        for value, what in ((text, "text before"), (pair, "pair after")):
            if not value.strip():
                raise InputError(f"{path}: line {n}: empty {what} the tab (a tab separates a sentence pair)")
        texts.append((text, pair))
    if not texts:
        raise InputError(f"{path}: no text (one example per line; a tab separates a sentence pair)")
    return texts


def encode_texts(out_dir: Path, texts: Sequence, max_len: int, spec=None, seed: int = 0,
                 cut: Optional[list] = None) -> dict[str, np.ndarray]:
    """Tokenize ``texts`` (strings or (text, pair) tuples) with the tokenizer bundled in ``out_dir``:
    int32 ``input_word_ids``, ``input_mask``, ``input_type_ids`` padded to the longest, plus the extra
    inputs ``spec``'s head needs (masked-LM positions inside the real tokens). ``cut``: a list given gets the
    indices of the texts truncation cut to ``max_len``."""
    tok = load_tokenizer(out_dir, max_len)
    lower = lowercases_input(out_dir)
    encodings = tok.encode_batch([lowercased(t) if lower else t if isinstance(t, str) else tuple(t) for t in texts])
    if cut is not None:
        cut.extend(i for i, e in enumerate(encodings) if e.overflowing)
    width = max(len(e.ids) for e in encodings)
    out = {"input_word_ids": np.zeros((len(encodings), width), np.int32),
           "input_mask": np.zeros((len(encodings), width), np.int32),
           "input_type_ids": np.zeros((len(encodings), width), np.int32)}
    for i, e in enumerate(encodings):
        n = len(e.ids)
        out["input_word_ids"][i, :n] = e.ids
        out["input_mask"][i, :n] = e.attention_mask
        out["input_type_ids"][i, :n] = e.type_ids
    if spec is not None:
        names = set(spec.encoder.input_names)
        out = {k: v for k, v in out.items() if k in names}
        if "input_word_ids" in out and int(out["input_word_ids"].max()) >= spec.encoder.vocab_size:
            raise InputError(f"the tokenizer in {out_dir} produced id {int(out['input_word_ids'].max())}, outside "
                             f"the model's vocab_size {spec.encoder.vocab_size}: it is not this model's tokenizer")
        if spec.head is not None:
            from bertc.registry import HEADS

            lengths = out["input_mask"].sum(axis=1)
            out.update(HEADS.create(spec.head, spec.encoder).make_inputs(lengths, np.random.default_rng(seed)))
    return out


TEXT_BATCH = 64   # examples per real-text case: a file of 20,000 lines was one padded batch (16 GB and rising)


def encode_batches(out_dir: Path, texts: Sequence, spec, label: str,
                   cut: Optional[list] = None) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``texts`` as padded batches of at most :data:`TEXT_BATCH` examples, each padded to its own longest example,
    named ``"text: N example(s) LABEL"`` when they fit in one, else ``"text: examples A-B of N LABEL"``: memory stays
    one batch's whatever the file holds, and a batch still judges the rank agreement of its similarities. ``cut``: a
    list given gets the indices (over all of ``texts``) of the examples truncation cut."""
    max_len, n = spec.encoder.max_sequence_length, len(texts)
    batches = []
    for start in range(0, n, TEXT_BATCH):
        cut_here: Optional[list] = [] if cut is not None else None
        inputs = encode_texts(out_dir, texts[start:start + TEXT_BATCH], max_len, spec, cut=cut_here)
        if cut_here:
            cut.extend(start + i for i in cut_here)
        stop = start + len(inputs["input_mask"])
        batches.append((f"text: {n} example(s) {label}" if n <= TEXT_BATCH else
                        f"text: examples {start + 1}-{stop} of {n} {label}", inputs))
    return batches


def text_cases(out_dir: Path, path: Path, spec) -> tuple[list[tuple[str, dict[str, np.ndarray]]], int]:
    """Parity cases from a text file: every example, in padded batches of up to 64 (:func:`encode_batches`: memory
    of one batch, however long the file), and the first one alone; and how many examples were cut to the model's
    maximum length."""
    texts = read_texts(path)
    max_len = spec.encoder.max_sequence_length
    cut: list = []
    cases = encode_batches(out_dir, texts, spec, f"from {Path(path).name}", cut=cut)
    if len(texts) > 1:
        cases.append((f"text: example 1 of {Path(path).name} alone", encode_texts(out_dir, texts[:1], max_len, spec)))
    return cases, len(cut)
