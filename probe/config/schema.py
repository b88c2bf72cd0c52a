"""The JSON Schema (draft 2020-12) of the YAML format, for editors: a view of the field table."""

from __future__ import annotations

from typing import Any

from probe.config.backends import BACKENDS
from probe.config.fields import (
    ADDRESS_PATTERN,
    ENV_NAME_PATTERN,
    HOST_PATTERN,
    NAME_PATTERN,
    SECTION_KINDS,
    URL_PATTERN,
    VERSION_PATTERN,
    FieldSpec,
)
from probe.config.table import SECTION_DOCS, SECTIONS
from probe.duration import DURATION_PATTERN, format_duration


def _schema_default(spec: FieldSpec) -> Any:
    """Return the default an editor should show for a field, if it has one."""
    if spec.inherited or spec.kind in SECTION_KINDS or spec.kind == "secret" or spec.default is None:
        return None
    if spec.kind == "duration":
        return format_duration(float(spec.default))
    return list(spec.default) if isinstance(spec.default, tuple) else spec.default


def _duration_schema(positive: bool) -> dict[str, Any]:
    number: dict[str, Any] = {"type": "number", "exclusiveMinimum" if positive else "minimum": 0}
    return {"anyOf": [number, {"type": "string", "pattern": DURATION_PATTERN}]}


def _field_schema(spec: FieldSpec) -> dict[str, Any]:
    ref = {"$ref": f"#/$defs/{spec.section}"}
    by_kind: dict[str, dict[str, Any]] = {
        "string": {"type": "string", "minLength": 1},
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "host": {"type": "string", "pattern": HOST_PATTERN},
        "address": {"type": "string", "pattern": ADDRESS_PATTERN},
        "url": {"type": "string", "pattern": URL_PATTERN},
        "version": {"type": "string", "pattern": VERSION_PATTERN},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "boolean": {"type": "boolean"},
        "duration": _duration_schema(spec.positive),
        "path": {"type": "string", "minLength": 1},
        "choice": {"enum": list(spec.choices)},
        "choice_list": {"type": "array", "items": {"enum": list(spec.choices)}, "minItems": 1,
                        "uniqueItems": True},
        "text_list": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                      "uniqueItems": True},
        "folder_list": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                        "uniqueItems": True},
        "section": ref,
        "section_list": {"type": "array", "items": ref, "minItems": 1},
        "section_map": {"type": "object", "additionalProperties": ref, "minProperties": 1,
                        "propertyNames": {"pattern": NAME_PATTERN}},
    }
    return by_kind[spec.kind]


def _secret_schemas(spec: FieldSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return the three properties of a secret and the rules that tie them together."""
    env_key, file_key, inline_key = spec.yaml_keys()
    properties = {
        env_key: {"type": "string", "pattern": ENV_NAME_PATTERN,
                  "description": f"The environment variable that holds the {spec.key}."},
        file_key: {"type": "string", "minLength": 1,
                   "description": f"The file that holds the {spec.key} (relative paths: to this file)."},
        inline_key: {"type": "string", "minLength": 1,
                     "description": f"The {spec.key} itself (warned: prefer {env_key} or {file_key})."},
    }
    keys = spec.yaml_keys()
    rules: list[dict[str, Any]] = [{"not": {"required": [a, b]}} for i, a in enumerate(keys) for b in keys[i + 1:]]
    one_of_them = {"anyOf": [{"required": [key]} for key in keys]}
    if spec.required:
        rules.append(one_of_them)
    if spec.pairs_with:
        rules.append({"if": one_of_them, "then": {"required": [spec.pairs_with]}})
        rules.append({"if": {"required": [spec.pairs_with]}, "then": one_of_them})
    return properties, rules


def _group_rules(specs: tuple[FieldSpec, ...]) -> list[dict[str, Any]]:
    """Return a ``oneOf`` per group of keys of which exactly one is given (a mailbox's backend: a branch each)."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        if spec.one_of is not None:
            groups.setdefault(spec.one_of, []).append(spec.key)
    return [{"oneOf": [{"required": [key]} for key in keys]} for keys in groups.values()]


def _backend_rules() -> list[dict[str, Any]]:
    """Return, per backend, how its row reads a mailbox's ``folders`` and which cleanups it refuses."""
    rules: list[dict[str, Any]] = []
    for backend in BACKENDS:
        properties: dict[str, Any] = {"folders": _field_schema(backend.folders)}
        if backend.refused_cleanups:
            properties["cleanup"] = {"not": {"enum": list(backend.refused_cleanups)}}
        rules.append({"if": {"required": [backend.name]}, "then": {"properties": properties}})
    return rules


def _section_schema(section: str) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    rules: list[dict[str, Any]] = []
    required: list[str] = []
    for spec in SECTIONS[section]:
        if spec.kind == "secret":
            secret_properties, secret_rules = _secret_schemas(spec)
            properties.update(secret_properties)
            rules.extend(secret_rules)
            continue
        schema = {"description": spec.doc, **_field_schema(spec)}
        default = _schema_default(spec)
        if default is not None:
            schema["default"] = default
        properties[spec.key] = schema
        if spec.required and spec.one_of is None:
            required.append(spec.key)
    rules.extend(_group_rules(SECTIONS[section]))
    if section == "mailbox":
        rules.extend(_backend_rules())
    if section == "smart_host":
        rules.append({"if": {"required": ["tls"], "properties": {"tls": {"const": "none"}}},
                      "then": {"required": ["allow_insecure"], "properties": {"allow_insecure": {"const": True}}}})
    result: dict[str, Any] = {"type": "object", "description": SECTION_DOCS[section], "properties": properties,
                              "additionalProperties": False}
    if required:
        result["required"] = required
    if rules:
        result["allOf"] = rules
    return result


def config_json_schema() -> dict[str, Any]:
    """Return a JSON Schema (draft 2020-12) of the YAML config, for editors."""
    root = _section_schema("config")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mailflow-probe configuration",
        **root,
        "$defs": {name: _section_schema(name) for name in SECTIONS if name != "config"},
    }
