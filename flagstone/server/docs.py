"""The API reference at ``/docs``: the OpenAPI spec rendered to one self-contained HTML page on the server.

FastAPI's Swagger UI and ReDoc pages load their scripts and styles from a CDN, so they are blank on a machine
without internet access. This page has no scripts and no external assets: every operation with its
parameters, request body and responses, and every schema with its fields, in plain HTML with inline CSS.
"""
from __future__ import annotations

import json
from html import escape
from typing import Any

METHODS = ("get", "post", "put", "patch", "delete", "head", "options")

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;color:#1d2430}
h1{margin-bottom:.2rem} h2{margin-top:2.2rem;border-bottom:1px solid #d6dbe3;padding-bottom:.3rem}
section.op{border:1px solid #d6dbe3;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.method{display:inline-block;min-width:4.2rem;text-align:center;font-weight:700;color:#fff;border-radius:4px;
 padding:.1rem .4rem;margin-right:.6rem;background:#56657a}
.get{background:#2f7d4f}.post{background:#2d5fa8}.delete{background:#b03a2e}.put,.patch{background:#a86a12}
code,.path{font-family:ui-monospace,monospace} .path{font-weight:600}
table{border-collapse:collapse;width:100%;margin:.4rem 0} th,td{text-align:left;padding:.25rem .5rem;
 border-bottom:1px solid #e6e9ee;vertical-align:top} th{font-weight:600;color:#56657a}
.muted{color:#6b7685} nav a{margin-right:.8rem}
"""


def render_docs(spec: dict[str, Any]) -> str:
    """The whole page for an OpenAPI 3 ``spec`` (as ``app.openapi()`` returns it)."""
    info = spec.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)} API</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{escape(title)}</h1>"]
    if info.get("description"):
        parts.append(f"<p>{escape(info['description'])}</p>")
    parts.append("<p class='muted'>The machine-readable spec is at <a href='openapi.json'><code>/openapi.json</code>"
                 "</a>. Errors answer <code>{\"error\": {\"type\", \"message\"}}</code>.</p>")
    parts.append("<nav><a href='#operations'>Operations</a><a href='#schemas'>Schemas</a></nav>")
    parts.append("<h2 id='operations'>Operations</h2>")
    for path, item in spec.get("paths", {}).items():
        for method in METHODS:
            if method in item:
                parts.append(_operation(path, method, item[method]))
    schemas = spec.get("components", {}).get("schemas", {})
    parts.append("<h2 id='schemas'>Schemas</h2>")
    for name, schema in schemas.items():
        parts.append(_schema_section(name, schema))
    parts.append("</body></html>")
    return "\n".join(parts)


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    out = [f"<section class='op' id='{escape(op.get('operationId', method + path))}'>",
           f"<div><span class='method {method}'>{method.upper()}</span><span class='path'>{escape(path)}</span>"
           f" <span class='muted'>{escape(op.get('summary', ''))}</span></div>"]
    if op.get("description"):
        out.append(f"<p>{escape(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        out.append("<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Required</th></tr>")
        for p in params:
            out.append(f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p.get('in', ''))}</td>"
                       f"<td>{_type(p.get('schema', {}))}</td><td>{'yes' if p.get('required') else 'no'}</td></tr>")
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            out.append(f"<p>Request body ({escape(media)}{', required' if body.get('required') else ''}): "
                       f"{_type(content.get('schema', {}))}</p>")
    out.append("<table><tr><th>Status</th><th>Response</th></tr>")
    for status, response in op.get("responses", {}).items():
        kinds = [_type(c.get("schema", {})) for c in response.get("content", {}).values()]
        out.append(f"<tr><td>{escape(str(status))}</td><td>{escape(response.get('description', ''))}"
                   f"{': ' + ', '.join(kinds) if kinds else ''}</td></tr>")
    out.append("</table></section>")
    return "\n".join(out)


def _schema_section(name: str, schema: dict[str, Any]) -> str:
    out = [f"<section class='op' id='schema-{escape(name)}'><div class='path'>{escape(name)}</div>"]
    if schema.get("description"):
        out.append(f"<p>{escape(schema['description'])}</p>")
    properties = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", []))
        out.append("<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Default</th><th>Limits</th></tr>")
        for field, sub in properties.items():
            default = json.dumps(sub["default"]) if "default" in sub else ""
            out.append(f"<tr><td><code>{escape(field)}</code></td><td>{_type(sub)}</td>"
                       f"<td>{'yes' if field in required else 'no'}</td><td><code>{escape(default)}</code></td>"
                       f"<td>{escape(_limits(sub))}</td></tr>")
        out.append("</table>")
    else:
        out.append(f"<p>{_type(schema)}</p>")
    out.append("</section>")
    return "\n".join(out)


def _type(schema: dict[str, Any]) -> str:
    """A short, escaped HTML rendering of a schema's type; references link to their schema's section."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"<a href='#schema-{escape(name)}'>{escape(name)}</a>"
    for combiner in ("anyOf", "oneOf", "allOf"):
        if combiner in schema:
            joiner = " and " if combiner == "allOf" else " or "
            return joiner.join(_type(s) for s in schema[combiner])
    if "enum" in schema:
        return " | ".join(f"<code>{escape(json.dumps(v))}</code>" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return escape(str(kind))


def _limits(schema: dict[str, Any]) -> str:
    names = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<",
             "minLength": "min length ", "maxLength": "max length ", "minItems": "min items ",
             "maxItems": "max items ", "pattern": "pattern "}
    found = [f"{label}{schema[key]:g}" if isinstance(schema[key], float) else f"{label}{schema[key]}"
             for key, label in names.items() if key in schema]
    for sub in schema.get("anyOf", []):
        if sub.get("type") != "null" and _limits(sub):
            found.append(_limits(sub))
    return ", ".join(found)
