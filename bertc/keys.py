"""The keys of each component's spec, one line each (``bertc list --keys``): name, what it takes, required or its
default. Rendered from the JSON Schema pydantic makes of the spec models, so it is what ``bertc validate`` accepts,
plug-ins included (``bertc schema`` has the whole schema)."""
from __future__ import annotations

import json
from typing import Any


def key_lines(spec_model: type) -> list[str]:
    """``spec_model``'s keys but ``type``: ``name  what-it-takes  required | default X``."""
    from bertc.spec import ensure_models

    ensure_models()   # a component field's choices as validate takes them: those registered since (plug-ins too)
    schema = spec_model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", ()))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        if name == "type" and "const" in prop:
            continue
        what = _what(prop, defs)
        default = _json(prop.get("default"))
        if isinstance(prop.get("default"), dict) and len(default) > 100:   # a section: its keys' own defaults
            default = "each key's default"
        when = "required" if name in required else f"default {default}" if "default" in prop else "optional"
        rows.append((name, what, when))
    width = max((len(n) for n, _, _ in rows), default=0)
    return [f"{n:<{width}}  {w}; {d}" for n, w, d in rows]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _what(prop: dict, defs: dict) -> str:
    """What a property takes, in words: ``integer >= 1``, ``gelu | relu``, ``list of ...``, a component kind's names."""
    if "discriminator" in prop:   # a component of a kind: its names
        return "one of " + " | ".join(sorted(prop["discriminator"].get("mapping", {}))) + " (by its type)"
    if "anyOf" in prop:
        parts = [p for p in prop["anyOf"] if p.get("type") != "null"]
        text = " or ".join(_what(p, defs) for p in parts)
        return text + (" or null" if len(parts) < len(prop["anyOf"]) else "")
    if "$ref" in prop:   # a section: its keys, and the choices of those that take a few names
        target = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
        return "{" + ", ".join(k + (": " + " | ".join(str(v) for v in p["enum"]) if "enum" in p else "")
                               for k, p in target.get("properties", {}).items()) + "}"
    if "const" in prop:
        return _json(prop["const"])
    if "enum" in prop:
        return " | ".join(str(v) for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        return "list of " + _what(prop.get("items", {}), defs)
    if kind == "object" and "additionalProperties" in prop:
        return "{name: " + _what(prop["additionalProperties"], defs) + "}"
    if kind in ("integer", "number"):
        bounds = [f"{op} {_json(prop[k])}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                          ("maximum", "<="), ("exclusiveMaximum", "<")) if k in prop]
        return f"{kind} " + ", ".join(bounds) if bounds else kind
    return kind or "any value"
