"""The config as the schema declares it: command-line strings typed, errors in a few lines.

Snakemake reads `--config analysis='{threshold: 6}'` with YAML's base loader, so every nested
value is a string; `conform` types such strings by what the schema declares there before the
config is validated, and refuses a float where an integer is due (YAML's `8.0`, which JSON Schema
would accept as an integer and a job would then choke on). `check` validates and, on the first
error, raises a `ConfigError` that names the key, the file and, for an unknown key, the allowed
ones with the nearest match, instead of Snakemake's dump of the whole schema.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path

import jsonschema
import yaml

SCHEMA = "schemas/config.schema.yaml"
BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
NULLS = {"null", "~", ""}
STRING_NULLS = {"null", "~"}  # YAML's nulls, for a key that also takes a string (where "" is a string)


class ConfigError(ValueError):
    """A config that is invalid or inconsistent; the message names the key."""


def load_schema(basedir: str | Path) -> dict:
    return yaml.safe_load((Path(basedir) / SCHEMA).read_text(encoding="utf8"))


def _resolve(node: dict, schema: dict) -> dict:
    """Follow local `$ref`s (`#/definitions/x`); the referring node's own keys win."""
    while isinstance(node, dict) and "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node if isinstance(node, dict) else {}


def _types(node: dict) -> set[str]:
    declared = node.get("type", [])
    return {declared} if isinstance(declared, str) else set(declared)


def key_name(path) -> str:
    """`attribution.shard_size`, `annotation.seeds[1]`; `(top level)` for the root."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "(top level)"


def _typed(value: str, types: set[str]):
    """A command-line string as the first declared type it parses as, else unchanged."""
    text = value.strip()
    if "integer" in types and re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if types & {"integer", "number"}:
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return int(number) if re.fullmatch(r"[+-]?\d+", text) else number
    if "boolean" in types and text.lower() in BOOLEANS:
        return BOOLEANS[text.lower()]
    if "null" in types and text.lower() in NULLS:
        return None
    if types & {"array", "object"}:
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, list) and "array" in types or isinstance(parsed, dict) and "object" in types:
            return parsed
    return value


def conform(value, schema: dict, node: dict | None = None, path: tuple = ()):
    """`value` with strings typed where the schema declares another type; a float where only an
    integer is allowed is a ConfigError naming the key. Keys the schema does not know are left to
    the validation."""
    node = _resolve(schema if node is None else node, schema)
    types = _types(node)
    if isinstance(value, str) and types and "string" not in types:
        value = _typed(value, types)
    elif isinstance(value, str) and "null" in types and value.lower() in STRING_NULLS:
        value = None  # --config paper_data=null: null, as a config file's YAML reads it, never a folder named null
    elif isinstance(value, int) and not isinstance(value, bool) and types == {"string"}:
        value = str(value)  # paper_commit=12345678 on the command line
    if isinstance(value, float) and "integer" in types and "number" not in types:
        raise ConfigError(f"{key_name(path)}: {value!r} is not an integer (write {value:.0f} if that is meant)"
                          if value.is_integer() else f"{key_name(path)}: {value!r} is not an integer")
    if isinstance(value, dict):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        return {
            key: conform(item, schema, properties.get(key, extra if isinstance(extra, dict) else {}), (*path, key))
            for key, item in value.items()
        }
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [conform(item, schema, node["items"], (*path, i)) for i, item in enumerate(value)]
    return value


def _unknown_keys(error: jsonschema.ValidationError, schema: dict) -> str:
    node = _resolve(error.schema, schema)
    allowed = list(node.get("properties", {}))
    unknown = [key for key in error.instance if key not in allowed]
    where = key_name(error.absolute_path)
    lines = []
    for key in unknown:
        near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean `{near[0]}`?" if near else ""
        lines.append(f"{key_name((*error.absolute_path, key))}: unknown key{hint}")
    place = "at the top level" if where == "(top level)" else "in " + where
    lines.append(f"allowed keys {place}: {', '.join(allowed)}")
    return "\n".join(lines)


def describe(error: jsonschema.ValidationError, schema: dict) -> str:
    """One error in a line or two: the key, what is wrong, what the schema says the key is."""
    if error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
        return _unknown_keys(error, schema)
    where = key_name(error.absolute_path)
    description = _resolve(error.schema, schema).get("description", "")
    if error.validator == "pattern" and where.endswith("api_key_env"):  # a key pasted here is not printed
        return (f"{where}: not the name of an environment variable (letters, digits and `_`): give the name of "
                "the variable that holds the API key, never the key itself")
    if error.validator == "pattern" and "propertyNames" in error.schema_path:
        return f"{where}: the key {error.instance!r} is not allowed: {description or error.message}"
    text = f"{where}: {error.message}"
    return f"{text} ({description})" if description and len(description) < 200 else text


def origin(files: list[str], overrides: bool) -> str:
    """Where the config came from, as the user typed it: the config files, and --config."""
    return " and ".join(filter(None, [", ".join(map(str, files)), "--config" if overrides else ""])) or "the config"


def named(source: tuple[list[str], bool], check, *args):
    """`check(*args)`, whose ConfigError then names the config's files too (Snakemake's own heading names
    the rule file that ran the check, not the file that holds the key). `source`: (files, --config given)."""
    try:
        return check(*args)
    except ConfigError as error:
        raise ConfigError(f"config error in {origin(*source)}:\n{error}") from None


def check(config: dict, schema: dict, files: list[str], overrides: bool) -> dict:
    """The conformed config, validated; else a ConfigError of a few lines naming the file."""
    return named((files, overrides), _checked, config, schema)


def _checked(config: dict, schema: dict) -> dict:
    config = conform(config, schema)
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(describe(error, schema))
    return config
