"""Click options generated from an experiment's config dataclass.

``@config_options(Cls)`` adds one option per field of ``Cls`` (name, help, choices and
bounds from the field's metadata, see :mod:`sparekit.utils.config`; a field without a default is
required, one marked ``argument=True`` is positional), plus ``--config FILE`` and ``--dry-run``.
The command receives ``config``, a ``Cls`` resolved with the precedence command line >
``--config`` file > the dataclass defaults, built by keyword; ``--dry-run`` prints it as JSON
and stops before any work.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from sparekit.cli.common import parse_list
from sparekit.data.loaders import check_dataset_name
from sparekit.errors import SparekitError
from sparekit.utils.config import config_dict, read_config_file

#: the config fields that name a conflict dataset (``--dataset``, ``--eval-dataset``)
DATASET_FIELDS = ("dataset", "eval_dataset")


def _shape(hint: Any) -> tuple[type, bool]:
    """``(base type, optional)`` of a field annotation: ``tuple[int, ...] | None`` -> ``(tuple[int, ...], True)``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _meta(cls: type, field: dataclasses.Field) -> dict[str, Any]:
    """A field's option settings: its metadata, overridden by the class's ``__cli__`` (for inherited fields)."""
    return {**field.metadata, **getattr(cls, "__cli__", {}).get(field.name, {})}


def _parser(name: str, meta: dict, hint: Any) -> Callable[[Any], Any]:
    """Turns an option string, or a value from a config file, into the field's value."""
    base, optional = _shape(hint)
    flag = _flag(name, meta)
    origin = typing.get_origin(base)

    def parse(value: Any) -> Any:
        if value is None and optional:
            return None
        if origin is tuple:
            kind = typing.get_args(base)[0]
            if meta.get("multiple") and isinstance(value, list | tuple):  # one value per use: commas are text
                items = tuple(kind(x) for x in value)
            else:
                text = value if isinstance(value, str) else ",".join(map(str, value if isinstance(value, list | tuple)
                                                                         else [value]))
                items = parse_list(text, kind, flag)  # a config file's list or number reads like the option's text
            if not items and not meta.get("multiple"):
                raise SparekitError(f"{flag} is empty", "give at least one value")
            repeated = sorted({str(x) for x in items if items.count(x) > 1})
            if repeated and meta.get("distinct", True):  # a repeated seed or layer would be counted twice
                raise SparekitError(f"{flag} repeats {', '.join(repeated)}", "give each value once")
            return items
        if base is dict or origin is dict:
            if value is None:
                return {}
            if isinstance(value, str):
                try:
                    value = json.loads(value) if value else {}
                except json.JSONDecodeError as exc:
                    raise SparekitError(f"{flag}: not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise SparekitError(f"{flag}: expected a JSON object")
            return value
        return value

    return parse


def _flag(name: str, meta: dict) -> str:
    return meta.get("flag", "--" + name.replace("_", "-"))


def _click_type(meta: dict, base: Any) -> click.ParamType | None:
    if "choices" in meta:
        return click.Choice(list(meta["choices"]))
    if base in (int, float) and ("min" in meta or "max" in meta):
        kind = click.IntRange if base is int else click.FloatRange
        return kind(meta.get("min"), meta.get("max"), min_open=meta.get("min_open", False),
                    max_open=meta.get("max_open", False))
    if base in (int, float, str):
        return click.types.convert_type(base)
    return None  # lists and JSON objects arrive as strings and are parsed by _parser


def _option(field: dataclasses.Field, meta: dict, hint: Any) -> Callable:
    base, _ = _shape(hint)
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    default = None if required else field.default if field.default is not dataclasses.MISSING \
        else field.default_factory()  # type: ignore[misc]
    if meta.get("argument"):  # a positional argument (CONTEXT, QUESTION): its help is the command's docstring
        return click.argument(field.name, required=True) if required else click.argument(field.name, default=default)
    names = [_flag(field.name, meta), *([meta["short"]] if "short" in meta else []), field.name]
    if base is bool:  # --gate/--no-gate shows its default; a plain --flag is off unless given
        return click.option(*names, is_flag=True, default=default, show_default="/" in names[0], help=meta.get("help"))
    if meta.get("multiple"):  # a repeatable option (--sae A --sae B), not a comma list
        return click.option(*names, multiple=True, default=default, metavar=meta.get("metavar"), help=meta.get("help"))
    shown: Any = default
    if isinstance(default, tuple):
        shown = ",".join(map(str, default))
    elif isinstance(default, dict):
        shown = json.dumps(default) if default else None
    return click.option(*names, type=_click_type(meta, base), default=shown, required=required,
                        show_default=meta.get("show_default", shown is not None), metavar=meta.get("metavar"),
                        help=meta.get("help"))


def _file_value(path: str, name: str, value: Any, hint: Any) -> Any:
    """A config file's value, refused unless it has the field's type: JSON and TOML carry types, and
    click's conversion would turn ``3.7`` into 3, ``true`` into 1 and ``5`` into the path "5" without a word."""
    base, optional = _shape(hint)
    base = typing.get_origin(base) or base
    if value is None and optional:
        return value
    wanted = {int: (int,), float: (int, float), str: (str,), bool: (bool,), tuple: (list, str, int, float),
              dict: (dict, str)}.get(base)
    if wanted is None or (isinstance(value, wanted) and (base is bool or not isinstance(value, bool))):
        return value
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", tuple: "a list",
             dict: "an object"}
    raise SparekitError(f"{path}: {name!r} must be {names[base]}, got {json.dumps(value)}",
                        f"write {name} = {_example(base)}" if str(path).endswith(".toml")
                        else f'write "{name}": {_example(base)}')


def _example(base: type) -> str:
    return {int: "3", float: "0.5", str: '"text"', bool: "true", tuple: "[1, 2]", dict: "{}"}[base]


def resolve(cls: type, ctx: click.Context, given: dict[str, Any], config_file: str | None) -> Any:
    """``cls`` from the command line's values, a config file's and the defaults, in that order."""
    hints = typing.get_type_hints(cls)
    from_file = read_config_file(config_file, cls) if config_file else {}
    values = {}
    for field in dataclasses.fields(cls):
        meta = _meta(cls, field)
        if not meta.get("cli", True):
            continue
        source = ctx.get_parameter_source(field.name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) or field.name not in from_file:
            raw = given[field.name]
        else:
            raw = _file_value(config_file, field.name, from_file[field.name], hints[field.name])
            param = next(p for p in ctx.command.params if p.name == field.name)
            if raw is not None and isinstance(param.type, click.types.ParamType) and \
                    not isinstance(param.type, click.types.StringParamType | click.types.BoolParamType):
                raw = param.type.convert(raw, param, ctx)  # a file's value gets the option's checks
        values[field.name] = _parser(field.name, meta, hints[field.name])(raw)
    return cls(**values)


def _cli_fields(cls: type) -> list[dataclasses.Field]:
    """``cls``'s command-line fields; those of the class that names the inherited ones (dataset, model …) lead."""
    fields = [f for f in dataclasses.fields(cls) if _meta(cls, f).get("cli", True)]
    lead = next((vars(k).get("__annotations__", {}) for k in cls.__mro__ if "__cli__" in vars(k)), {})
    return sorted(fields, key=lambda f: f.name not in lead)


def _field_options(cls: type) -> list[Callable]:
    """One click option per command-line field of ``cls``, named after the field (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    return [_option(f, _meta(cls, f), hints[f.name]) for f in _cli_fields(cls)]


def _check_datasets(config: Any) -> None:
    """Refuse in ``--dry-run`` a dataset name the run would refuse (``--dataset nqswp``)."""
    for name in DATASET_FIELDS:
        if getattr(config, name, None) is not None:
            check_dataset_name(getattr(config, name))


def config_options(cls: type) -> Callable[[Callable], Callable]:
    """Decorate a click command: options from ``cls``'s fields, ``--config``, ``--dry-run``; passes ``config``."""
    fields = _cli_fields(cls)

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            ctx = click.get_current_context()
            config_file, dry_run = kwargs.pop("config_file"), kwargs.pop("dry_run")
            given = {f.name: kwargs.pop(f.name) for f in fields}
            config = resolve(cls, ctx, given, config_file)
            if dry_run:
                _check_datasets(config)
                click.echo(json.dumps(config_dict(config), indent=2))
                return None
            return command(config=config, **kwargs)

        extra = [click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                              help="JSON or TOML file of option values (the command line wins over it)."),
                 click.option("--dry-run", is_flag=True, help="Print the resolved configuration as JSON and stop.")]
        for option in reversed([*_field_options(cls), *extra]):
            wrapper = option(wrapper)
        wrapper.__config__ = cls  # type: ignore[attr-defined]  (tests/test_cli_configs.py reads it)
        return wrapper

    return decorate
