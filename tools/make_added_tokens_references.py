"""Record what transformers' AutoTokenizer gives on tests/added_tokens_layouts.py's directories (tokens added by
tokenizer_config.json / added_tokens.json, a tokenizer.json transformers does not read), for
tests/test_added_tokens.py. Run in the side environment (transformers; never a bertc dependency), once per
transformers version to compare; the first run's ids are written, a later run's differences are printed:

    /work/envs/hf/bin/python tools/make_added_tokens_references.py --write
    /work/envs/hf4/bin/python tools/make_added_tokens_references.py
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "tests" / "fixtures" / "added_tokens_expected.json"


def _layouts():
    spec = importlib.util.spec_from_file_location("added_tokens_layouts", ROOT / "tests" / "added_tokens_layouts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dumps(record: dict) -> str:
    """The record as JSON, one line a layout."""
    head = {k: v for k, v in record.items() if k != "layouts"}
    lines = [json.dumps(head)[:-1] + ', "layouts": {']
    items = list(record["layouts"].items())
    for i, (name, value) in enumerate(items):
        lines.append(f" {json.dumps(name)}: {json.dumps(value)}{',' if i < len(items) - 1 else ''}")
    return "\n".join(lines + ["}}", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {EXPECTED.relative_to(ROOT)}")
    args = parser.parse_args()
    import transformers
    from transformers import AutoTokenizer

    layouts = _layouts()
    record = {"transformers": transformers.__version__, "texts": layouts.TEXTS, "pair": list(layouts.PAIR),
              "layouts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in {**layouts.LAYOUTS, **layouts.REFUSED}.items():
            tok = AutoTokenizer.from_pretrained(str(make(Path(tmp) / name)))
            pair = tok(*layouts.PAIR)
            record["layouts"][name] = {"class": type(tok).__name__,
                                       "ids": [tok(t)["input_ids"] for t in layouts.TEXTS],
                                       "pair_ids": pair["input_ids"], "pair_type_ids": pair.get("token_type_ids")}
    if args.write:
        EXPECTED.write_text(_dumps(record), encoding="utf-8")
        print(f"wrote {EXPECTED}")
    elif EXPECTED.exists():
        old = json.loads(EXPECTED.read_text(encoding="utf-8"))
        for name, got in record["layouts"].items():
            want = old["layouts"].get(name, {})
            same = all(got[k] == want.get(k) for k in ("ids", "pair_ids", "pair_type_ids"))
            print(f"{name}: {'same ids as' if same else 'DIFFERENT ids from'} transformers {old['transformers']}"
                  f" ({got['class']})")
    print(_dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
