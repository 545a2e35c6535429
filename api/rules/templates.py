"""Alert labels and annotations as Prometheus expands them: a subset of Go's text/template.

No maintained Python library reads Go templates (the ones that exist wrap Go's own through cgo and
need a Go compiler at install), so this is our own, and deliberately small: what alert rules
write in practice, and nothing that could surprise. A template is parsed when its rule file loads,
so anything outside the subset refuses the file with the construct named, and every template
fleetpulse accepts is one Go's parser accepts (promtool checks the same files in the tests).

Supported, as in Prometheus (rules/alerting.go prepends the same variables):

- text, ``{{ pipeline }}``, comments ``{{/* ... */}}``, and the trim markers ``{{-`` and ``-}}``;
- ``$labels.NAME`` / ``.Labels.NAME``, ``$value`` / ``.Value``, ``$externalLabels.NAME`` /
  ``.ExternalLabels.NAME``, ``$externalURL`` / ``.ExternalURL``; a label that is missing is empty
  (Prometheus expands with Go's ``missingkey=zero``), so a label template of one is dropped;
- string (``"..."``, `` `...` ``) and number literals;
- pipelines ``a | f | g`` and calls ``f a b``, with Prometheus' functions ``humanize``,
  ``humanize1024``, ``humanizePercentage``, ``humanizeDuration``, ``printf``, ``toUpper``,
  ``toLower``, ``title``, ``reReplaceAll``.

Not supported (refused at load): ``if``/``range``/``with``/``define``/``template`` blocks,
variables other than the four, and the functions that run queries (``query``, ``first``...).
Values print as Go prints a float64 with ``%v``; an expansion that fails prints
``<error expanding template: ...>`` in place of the text, as Prometheus does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fleetpulse.errors import BadInput


class TemplateError(BadInput):
    """A template outside the subset, or one that does not parse."""


# -- values as Go formats them ---------------------------------------------------------------


def go_float(value: float) -> str:
    """A float64 as Go's ``%v`` writes it (strconv's 'g' with the shortest digits: an exponent
    from 1e6 up or below 1e-4, written ``1e+06``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    exp10 = len(text) + exponent - 1
    minus = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if exp10 < 0:
        return f"{minus}0.{'0' * (-exp10 - 1)}{text}"
    if len(text) <= exp10 + 1:
        return f"{minus}{text}{'0' * (exp10 + 1 - len(text))}"
    return f"{minus}{text[: exp10 + 1]}.{text[exp10 + 1 :]}"


def _g4(value: float) -> str:
    """Go's ``%.4g``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.4g}"


def _number(arg: Any) -> float:
    if isinstance(arg, str):
        try:
            return float(arg)
        except ValueError:
            raise TemplateError(f"strconv.ParseFloat: parsing {arg!r}: invalid syntax") from None
    return float(arg)


def humanize(arg: Any) -> str:
    v = _number(arg)
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
        return _g4(v) + prefix
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return _g4(v) + prefix


def humanize1024(arg: Any) -> str:
    v = _number(arg)
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix, v = p, v / 1024
    return _g4(v) + prefix


def humanize_percentage(arg: Any) -> str:
    return _g4(_number(arg) * 100) + "%"


def humanize_duration(arg: Any) -> str:
    v = _number(arg)
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    if v == 0:
        return _g4(v) + "s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        whole = int(v)
        seconds, minutes = whole % 60, (whole // 60) % 60
        hours, days = (whole // 3600) % 24, whole // 86400
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(v)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{_g4(v)}{prefix}s"


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _go_type(arg: Any) -> str:
    return "float64" if isinstance(arg, float) else "int" if isinstance(arg, int) else "string"


def _bad_verb(verb: str, arg: Any, precision: str | None) -> str:
    """Go's note for a verb that does not fit its argument: ``%!d(float64=3)``."""
    if isinstance(arg, int) and not isinstance(arg, bool):
        shown = format(arg, f"0{precision}d") if precision else str(arg)
    else:
        shown = go_float(arg) if isinstance(arg, float) else str(arg)
    return f"%!{verb}({_go_type(arg)}={shown})"


def printf(fmt: Any, *args: Any) -> str:
    """Go's ``fmt.Sprintf`` for the verbs rule templates use (%s %v %d %f %e %g %q %x %%), with
    Go's inline notes for a verb that does not fit its argument, a missing and an extra one."""
    out, pos, used = [], 0, 0
    text = str(fmt)
    for found in _VERB.finditer(text):
        out.append(text[pos : found.start()])
        pos = found.end()
        flags, width, precision, verb = found.groups()
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[used]
        used += 1
        spec = flags + (width or "") + (f".{precision}" if precision is not None else "")
        is_float = isinstance(arg, float)
        is_int = isinstance(arg, int) and not isinstance(arg, bool)
        if verb in "fFeEgG":
            if not is_float:
                out.append(_bad_verb(verb, arg, precision))
            elif math.isnan(arg) or math.isinf(arg):
                out.append(go_float(arg))
            else:
                out.append(format(arg, spec + verb))
        elif verb in "dx":
            out.append(format(arg, spec + verb) if is_int else _bad_verb(verb, arg, precision))
        elif verb == "s":
            out.append(format(arg, spec) if isinstance(arg, str) else _bad_verb(verb, arg, None))
        elif verb == "q" and isinstance(arg, str):
            out.append('"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif verb == "v":
            shown = go_float(arg) if is_float else str(arg)
            out.append(format(shown, spec) if spec else shown)
        else:
            out.append(_bad_verb(verb, arg, None))
    out.append(text[pos:])
    if used < len(args):
        extra = ", ".join(
            f"{_go_type(a)}={go_float(a) if isinstance(a, float) else a}" for a in args[used:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _title(text: Any) -> str:
    """Go's strings.Title: the first letter of each word upper-cased, the rest left alone."""
    out, after_separator = [], True
    for char in str(text):
        out.append(char.upper() if after_separator else char)
        after_separator = not (char.isalnum() or char == "_")
    return "".join(out)


_GO_GROUP = re.compile(r"\$(\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _re_replace_all(pattern: Any, replacement: Any, text: Any) -> str:
    """Go's Regexp.ReplaceAllString: ``$name`` / ``${name}`` take the longest run of letters,
    digits and _ as the group's name or number (a group that does not exist is empty), ``$$`` is a
    dollar, and backslashes are plain text."""
    template = str(replacement)

    def expand(match: re.Match[str]) -> str:
        def group(found: re.Match[str]) -> str:
            if found.group(1) == "$":
                return "$"
            name = found.group(2) or found.group(3)
            try:
                return match.group(int(name) if name.isdigit() else name) or ""
            except IndexError:
                return ""

        return _GO_GROUP.sub(group, template)

    return re.sub(str(pattern), expand, str(text))


FUNCTIONS: dict[str, Callable[..., str]] = {
    "humanize": humanize,
    "humanize1024": humanize1024,
    "humanizePercentage": humanize_percentage,
    "humanizeDuration": humanize_duration,
    "printf": printf,
    "toUpper": lambda s: str(s).upper(),
    "toLower": lambda s: str(s).lower(),
    "title": _title,
    "reReplaceAll": _re_replace_all,
}
# Prometheus' functions this subset refuses rather than imitate.
_REFUSED = {
    "query",
    "first",
    "label",
    "value",
    "sortByLabel",
    "strvalue",
    "args",
    "tmpl",
    "safeHtml",
    "match",
    "graphLink",
    "tableLink",
    "pathPrefix",
    "externalURL",
    "parseDuration",
    "stripPort",
    "stripDomain",
    "toTime",
    "humanizeTimestamp",
}

# -- parsing -----------------------------------------------------------------------------------

_GO_SPACE = " \t\r\n"  # what a trim marker removes (Go's lexer)
_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
      | (?P<var>\$[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)
      | (?P<field>(?:\.[A-Za-z_]\w*)+)
      | (?P<ident>[A-Za-z_]\w*)
      | (?P<pipe>\|)
      | (?P<paren>[()])
    )""",
    re.VERBOSE,
)
_VARIABLES = {
    "$labels": "Labels",
    "$value": "Value",
    "$externalLabels": "ExternalLabels",
    "$externalURL": "ExternalURL",
}
_KEYWORDS = {
    "if",
    "else",
    "end",
    "range",
    "with",
    "define",
    "template",
    "block",
    "break",
    "continue",
    "nil",
}


@dataclass(frozen=True)
class _Operand:
    kind: str  # "lit", "data" (a path into the data), "func"
    value: Any  # the literal, the path (tuple of names), or the function name


_Command = list[_Operand]


_ESCAPE = re.compile(
    r"\\(?:([abfnrtv\\\"])|x([0-9a-fA-F]{2})|([0-7]{3})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.?))",
    re.DOTALL,
)
_SIMPLE_ESCAPES = dict(zip('abfnrtv\\"', '\a\b\f\n\r\t\v\\"', strict=True))


def _unquote(token: str, where: str) -> str:
    """A Go string literal's value: raw (backquotes) as it is; interpreted with Go's escapes,
    anything else refused as Go refuses it."""
    if token.startswith("`"):
        return token[1:-1]

    def escape(found: re.Match[str]) -> str:
        simple, hex2, octal, u4, u8, other = found.groups()
        if simple:
            return _SIMPLE_ESCAPES[simple]
        if other is not None:
            raise TemplateError(f"{where}: invalid syntax: unknown escape sequence in {token}")
        return chr(int(hex2 or u4 or u8, 16) if not octal else int(octal, 8))

    return _ESCAPE.sub(escape, token[1:-1])


def _parse_pipeline(text: str, where: str) -> list[_Command]:
    if text.startswith("/*"):
        if "*/" not in text:
            raise TemplateError(f"{where}: unclosed comment")
        if not text.endswith("*/"):
            raise TemplateError(f"{where}: comment ends before closing delimiter")
        return []
    if text.strip().startswith("/*"):
        raise TemplateError(f"{where}: a comment must follow {{{{ (or {{{{- ) at once")
    commands: list[_Command] = [[]]
    pos, text = 0, text.rstrip()
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if not found or found.end() == pos:
            raise TemplateError(f"{where}: unexpected {text[pos:].strip()[:20]!r} in action")
        pos = found.end()
        kind = found.lastgroup
        token = found.group(kind or 0)
        if kind == "pipe":
            if not commands[-1]:
                raise TemplateError(f"{where}: missing command before '|'")
            commands.append([])
        elif kind in ("string", "raw"):
            commands[-1].append(_Operand("lit", _unquote(token, where)))
        elif kind == "number":
            number = float(token)
            commands[-1].append(
                _Operand(
                    "lit",
                    int(number)
                    if number.is_integer() and "." not in token and "e" not in token.lower()
                    else number,
                )
            )
        elif kind == "var":
            name, _, label = token.partition(".")
            if name not in _VARIABLES:
                raise TemplateError(f"{where}: undefined variable {name!r}")
            path = (_VARIABLES[name],) + ((label,) if label else ())
            commands[-1].append(_Operand("data", path))
        elif kind == "field":
            path = tuple(token[1:].split("."))
            if path[0] not in _VARIABLES.values():
                raise TemplateError(f"{where}: can't evaluate field {path[0]}")
            commands[-1].append(_Operand("data", path))
        elif kind == "ident":
            if token in _KEYWORDS:
                raise TemplateError(f"{where}: {token!r} blocks are not supported by fleetpulse")
            if token in _REFUSED:
                raise TemplateError(
                    f"{where}: template function {token!r} is not supported by fleetpulse"
                )
            if token not in FUNCTIONS:
                raise TemplateError(f'{where}: function "{token}" not defined')
            commands[-1].append(_Operand("func", token))
        else:
            raise TemplateError(f"{where}: parentheses are not supported by fleetpulse")
    if not commands[-1]:
        raise TemplateError(f"{where}: missing value for command")
    for stage, command in enumerate(commands[1:], start=2):
        if command[0].kind != "func":
            raise TemplateError(f"{where}: non executable command in pipeline stage {stage}")
    for command in commands:
        if command[0].kind != "func" and len(command) > 1:
            raise TemplateError(f"{where}: can't give argument to non-function {command[0].value}")
        if any(op.kind == "func" for op in command[1:]):
            raise TemplateError(
                f"{where}: a function as an argument needs parentheses, which fleetpulse does not support"
            )
    return commands


class Template:
    """One parsed template; `expand` renders it for one alert."""

    def __init__(self, text: str, where: str = "template") -> None:
        self.text = text
        self._parts: list[str | list[_Command]] = []
        pos = 0
        for found in _ACTION.finditer(text):
            literal = text[pos : found.start()]
            if found.group(1):
                literal = literal.rstrip(_GO_SPACE)
            if self._parts and isinstance(self._parts[-1], str) and self._parts[-1] == "\0trim":
                self._parts.pop()
                literal = literal.lstrip(_GO_SPACE)
            self._parts.append(literal)
            if "{{" in found.group(2):
                raise TemplateError(f"{where}: unexpected '{{{{' in action")
            pipeline = _parse_pipeline(found.group(2), where)
            if pipeline:
                self._parts.append(pipeline)
            if found.group(3):
                self._parts.append("\0trim")
            pos = found.end()
        rest = text[pos:]
        if "{{" in rest:
            raise TemplateError(f"{where}: unclosed action")
        if self._parts and self._parts[-1] == "\0trim":
            self._parts.pop()
            rest = rest.lstrip(_GO_SPACE)
        self._parts.append(rest)

    @property
    def plain(self) -> bool:
        return all(isinstance(p, str) for p in self._parts)

    def expand(
        self,
        labels: Mapping[str, str],
        value: float,
        external_labels: Mapping[str, str] | None = None,
        external_url: str = "",
    ) -> str:
        data = {
            "Labels": labels,
            "Value": value,
            "ExternalLabels": external_labels or {},
            "ExternalURL": external_url,
        }
        out = []
        try:
            for part in self._parts:
                out.append(part if isinstance(part, str) else _show(_run(part, data)))
        except (TemplateError, ValueError, TypeError, re.error) as exc:
            message = exc.message if isinstance(exc, TemplateError) else str(exc)
            return f"<error expanding template: {message}>"
        return "".join(out)


_NO_VALUE = object()


def _operand(op: _Operand, data: Mapping[str, Any]) -> Any:
    if op.kind == "lit":
        return op.value
    found: Any = data
    for name in op.value:
        if not isinstance(found, Mapping):
            raise TemplateError(f"can't evaluate field {name}")
        found = found.get(name, "")  # Prometheus' missingkey=zero
    return found


def _run(pipeline: list[_Command], data: Mapping[str, Any]) -> Any:
    result: Any = _NO_VALUE
    for i, command in enumerate(pipeline):
        head = command[0]
        if head.kind != "func":
            result = _operand(head, data)
            continue
        args = [_operand(op, data) for op in command[1:]]
        if i > 0:
            args.append(result)
        if any(a is _NO_VALUE for a in args):
            raise TemplateError(f"error calling {head.value}: missing value")
        result = FUNCTIONS[head.value](*args)
    return result


def _show(value: Any) -> str:
    if value is _NO_VALUE:
        return "<no value>"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(value.items())) + "]"
    return str(value)
