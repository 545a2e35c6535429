"""Alert label and annotation templates (api/rules/templates.py) expand as Prometheus 2.42 expands
them: values printed as Go's ``%v`` prints a float64, Prometheus' humanize functions, Go's
``printf``, variables, pipelines, trim markers and comments; and what the subset does not read is
refused when the template is parsed, with the construct named.

Every expected output here is what Debian's Prometheus 2.42 produces for the same template
(checked with ``promtool test rules``), not what the implementation happens to print.
"""

from __future__ import annotations

import math

import pytest

from fleetpulse.api.rules.templates import (
    Template,
    TemplateError,
    go_float,
    humanize,
    humanize1024,
    humanize_duration,
    humanize_percentage,
    printf,
)
from fleetpulse.errors import BadInput

NAN, INF = math.nan, math.inf
LABELS = {"instance": "host:9100", "job": "node"}
EXTERNAL = {"region": "eu"}
URL = "http://prom.example:9090"


def expand(text: str, value: float = 3.0, labels: dict[str, str] | None = None) -> str:
    return Template(text).expand(LABELS if labels is None else labels, value, EXTERNAL, URL)


# -- values as Go's %v prints a float64 --------------------------------------------------------

GO_FLOAT = [
    (0.0, "0"),
    (-0.0, "-0"),
    (1.0, "1"),
    (0.5, "0.5"),
    (1e6, "1e+06"),
    (123456.0, "123456"),
    (123456.7, "123456.7"),
    (1234567.0, "1.234567e+06"),
    (100000.0, "100000"),
    (1e-5, "1e-05"),
    (0.0001, "0.0001"),
    (1.5e-7, "1.5e-07"),
    (0.1, "0.1"),
    (-2.5, "-2.5"),
    (12345.678, "12345.678"),
    (1e21, "1e+21"),
    (1e100, "1e+100"),
    (5e-324, "5e-324"),
    (NAN, "NaN"),
    (INF, "+Inf"),
    (-INF, "-Inf"),
]


@pytest.mark.parametrize(("value", "want"), GO_FLOAT, ids=[w for _, w in GO_FLOAT])
def test_go_float_prints_as_gos_percent_v(value: float, want: str) -> None:
    assert go_float(value) == want


@pytest.mark.parametrize(("value", "want"), GO_FLOAT, ids=[w for _, w in GO_FLOAT])
def test_value_prints_as_gos_percent_v(value: float, want: str) -> None:
    assert expand("{{ $value }}", value) == want
    assert expand("{{ .Value }}", value) == want


# -- Prometheus' humanize functions --------------------------------------------------------------

HUMANIZE = [
    (0.0, "0"),
    (-0.0, "-0"),
    (1.0, "1"),
    (1.5, "1.5"),
    (61.5, "61.5"),
    (59.99999, "60"),
    (999.95, "1000"),
    (1024.0, "1.024k"),
    (1234.5678, "1.235k"),
    (-1234.5678, "-1.235k"),
    (90061.0, "90.06k"),
    (1e6, "1M"),
    (1048576.0, "1.049M"),
    (2.5e9, "2.5G"),
    (1e27, "1000Y"),
    (1e30, "1e+06Y"),
    (0.5, "500m"),
    (0.25, "250m"),
    (0.1234, "123.4m"),
    (0.001, "1m"),
    (-0.001, "-1m"),
    (-0.5, "-500m"),
    (0.000012, "12u"),
    (1e-6, "1u"),
    (1e-7, "100n"),
    (NAN, "NaN"),
    (INF, "+Inf"),
    (-INF, "-Inf"),
]
HUMANIZE_1024 = [
    (0.0, "0"),
    (1.0, "1"),
    (-0.5, "-0.5"),
    (0.001, "0.001"),
    (1e-7, "1e-07"),
    (1.5, "1.5"),
    (1023.99, "1024"),
    (1024.0, "1ki"),
    (1234.5678, "1.206ki"),
    (-2048.0, "-2ki"),
    (1e6, "976.6ki"),
    (1048576.0, "1Mi"),
    (2.5e9, "2.328Gi"),
    (1e27, "827.2Yi"),
    (NAN, "NaN"),
    (INF, "+Inf"),
    (-INF, "-Inf"),
]
HUMANIZE_PERCENTAGE = [
    (0.0, "0%"),
    (-0.0, "-0%"),
    (0.1234, "12.34%"),
    (0.5, "50%"),
    (1.0, "100%"),
    (1.5, "150%"),
    (-0.5, "-50%"),
    (0.001, "0.1%"),
    (0.000012, "0.0012%"),
    (1234.5678, "1.235e+05%"),
    (NAN, "NaN%"),
    (INF, "+Inf%"),
    (-INF, "-Inf%"),
]
HUMANIZE_DURATION = [
    (0.0, "0s"),
    (-0.0, "-0s"),
    (1.0, "1s"),
    (1.5, "1.5s"),
    (59.99999, "60s"),
    (61.5, "1m 1s"),
    (1234.5678, "20m 34s"),
    (3661.0, "1h 1m 1s"),
    (-3661.0, "-1h 1m 1s"),
    (86400.0, "1d 0h 0m 0s"),
    (90061.0, "1d 1h 1m 1s"),
    (1e6, "11d 13h 46m 40s"),
    (0.5, "500ms"),
    (-0.5, "-500ms"),
    (0.25, "250ms"),
    (0.1234, "123.4ms"),
    (0.001, "1ms"),
    (-0.001, "-1ms"),
    (0.000012, "12us"),
    (1e-6, "1us"),
    (1e-7, "100ns"),
    (NAN, "NaN"),
    (INF, "+Inf"),
    (-INF, "-Inf"),
]


@pytest.mark.parametrize(("value", "want"), HUMANIZE, ids=[w for _, w in HUMANIZE])
def test_humanize(value: float, want: str) -> None:
    assert humanize(value) == want
    assert expand("{{ $value | humanize }}", value) == want


@pytest.mark.parametrize(("value", "want"), HUMANIZE_1024, ids=[w for _, w in HUMANIZE_1024])
def test_humanize1024(value: float, want: str) -> None:
    assert humanize1024(value) == want
    assert expand("{{ $value | humanize1024 }}", value) == want


@pytest.mark.parametrize(
    ("value", "want"), HUMANIZE_PERCENTAGE, ids=[w for _, w in HUMANIZE_PERCENTAGE]
)
def test_humanize_percentage(value: float, want: str) -> None:
    assert humanize_percentage(value) == want
    assert expand("{{ $value | humanizePercentage }}", value) == want


@pytest.mark.parametrize(
    ("value", "want"), HUMANIZE_DURATION, ids=[w for _, w in HUMANIZE_DURATION]
)
def test_humanize_duration(value: float, want: str) -> None:
    assert humanize_duration(value) == want
    assert expand("{{ $value | humanizeDuration }}", value) == want


def test_humanize_functions_take_numbers_written_as_strings_and_literals() -> None:
    assert expand('{{ "1234" | humanize }}') == "1.234k"
    assert expand("{{ humanize 1234 }}") == "1.234k"
    assert expand("{{ 0.5 | humanizePercentage }}") == "50%"
    assert expand('{{ humanizeDuration "3661" }}') == "1h 1m 1s"


# -- printf ----------------------------------------------------------------------------------------

PRINTF = [
    ('{{ printf "%.2f" $value }}', 3.14159, "3.14"),
    ('{{ printf "%.2f" $value }}', 3.0, "3.00"),
    ('{{ $value | printf "%.3f" }}', 3.0, "3.000"),
    ('{{ printf "%5.1f|" $value }}', 3.0, "  3.0|"),
    ('{{ printf "%d" 42 }}', 3.0, "42"),
    ('{{ printf "%s" $labels.instance }}', 3.0, "host:9100"),
    ('{{ printf "%v" $value }}', 3.0, "3"),
    ('{{ printf "%v" $value }}', 1e6, "1e+06"),
    ('{{ printf "%v" 1e6 }}', 3.0, "1e+06"),
    ('{{ printf "%q" $labels.instance }}', 3.0, '"host:9100"'),
    ('{{ printf "%s is at %.1f%%" $labels.instance $value }}', 3.0, "host:9100 is at 3.0%"),
    ('{{ printf "%s %s" $labels.job }}', 3.0, "node %!s(MISSING)"),
]


@pytest.mark.parametrize(("text", "value", "want"), PRINTF, ids=[t for t, _, _ in PRINTF])
def test_printf(text: str, value: float, want: str) -> None:
    assert expand(text, value) == want


def test_printf_called_directly() -> None:
    assert printf("%.2f", 3.14159) == "3.14"
    assert printf("%d", 42) == "42"
    assert printf("%s", "x") == "x"
    assert printf("%v", 1e6) == "1e+06"
    assert printf("100%%") == "100%"


# Go's fmt prints a verb that does not fit its argument's type as %!verb(type=value) and an
# unused argument as %!(EXTRA type=value). Prometheus 2.42's outputs, from `promtool test rules`:
PRINTF_AS_GO = [
    ('{{ printf "%d" $value }}', "%!d(float64=3)"),
    ('{{ printf "%s" $value }}', "%!s(float64=3)"),
    ('{{ printf "%.2f" 3 }}', "%!f(int=03)"),
    ('{{ printf "%d" "abc" }}', "%!d(string=abc)"),
    ('{{ printf "%s" $labels.job 5 }}', "node%!(EXTRA int=5)"),
]


@pytest.mark.parametrize(("text", "want"), PRINTF_AS_GO, ids=[t for t, _ in PRINTF_AS_GO])
def test_printf_with_a_verb_that_does_not_fit_prints_as_go_does(text: str, want: str) -> None:
    assert expand(text, 3.0) == want


# -- variables, pipelines, literals, trim markers, comments ------------------------------------

EXPANSIONS = [
    ("plain text", "plain text"),
    ("{{ $labels.instance }}", "host:9100"),
    ("{{ .Labels.job }}", "node"),
    ("{{ $labels.instance }} is {{ .Labels.job }}", "host:9100 is node"),
    ("{{ $externalLabels.region }}", "eu"),
    ("{{ .ExternalLabels.region }}", "eu"),
    ("{{ $externalURL }}", URL),
    ("{{ $labels }}", "map[instance:host:9100 job:node]"),
    ("{{ $value | humanize }}", "1.235k"),
    ('{{ $value | printf "%.1f" }}', "1234.6"),
    ("{{ $labels.instance | toUpper }}", "HOST:9100"),
    ('{{ "ABC" | toLower }}', "abc"),
    ('{{ reReplaceAll ":[0-9]+" "" $labels.instance }}', "host"),
    ('{{ reReplaceAll "(.*):(.*)" "$2-$1" $labels.instance }}', "9100-host"),
    ('{{ reReplaceAll "(o)" "${1}x" "foo" }}', "foxox"),
    ("{{ 5 }}", "5"),
    ("{{ 1.5 }}", "1.5"),
    ("{{ 1e6 }}", "1e+06"),
    ("{{ -3 }}", "-3"),
    ("{{-3}}", "-3"),
    ("{{ .5 }}", "0.5"),
    ('{{ "s" }}', "s"),
    ('{{ "a\\tb" }}', "a\tb"),
    ("{{ `raw\\n` }}", "raw\\n"),
    ("a  \n {{- $value -}} \n b", "a1234.5678b"),
    ("{{- $value }}  x", "1234.5678  x"),
    ("x  {{ $value -}}", "x  1234.5678"),
    ("x \t\r\n{{- $labels.job -}}\n\t y", "xnodey"),
    ("a {{/* c */}} b", "a  b"),
    ("a {{- /* c */ -}} b", "ab"),
    ("a {{/* multi\nline */}}b", "a b"),
]


@pytest.mark.parametrize(("text", "want"), EXPANSIONS, ids=[t for t, _ in EXPANSIONS])
def test_expands_as_prometheus(text: str, want: str) -> None:
    assert expand(text, 1234.5678) == want


def test_a_template_without_actions_is_plain() -> None:
    assert Template("just text").plain
    assert Template("{{/* only a comment */}}").plain
    assert not Template("{{ $value }}").plain


# Prometheus 2.42 expands alert templates with Go's missingkey=zero: a label that is missing
# prints "" (the zero string), not "<no value>" (`promtool test rules` gives "" for all three).
@pytest.mark.parametrize(
    "text", ["{{ $labels.missing }}", "{{ .Labels.missing }}", "{{ $externalLabels.missing }}"]
)
def test_a_missing_label_prints_as_in_prometheus(text: str) -> None:
    assert expand(text) == ""


def test_an_expansion_that_fails_prints_the_error_in_place_of_the_text() -> None:
    for text in ('{{ "abc" | humanize }}', "{{ $value.x }}", "{{ humanize }}"):
        out = expand(f"before {text} after")
        assert out.startswith("<error expanding template: "), (text, out)
        assert out.endswith(">"), (text, out)
        assert "before" not in out and "\n" not in out, (text, out)


# A string literal is unquoted as Go's strconv.Unquote does: its non-ASCII text survives an
# escape beside it (Python's unicode_escape would read the UTF-8 bytes as Latin-1).
def test_a_string_literal_with_an_escape_keeps_its_non_ascii_text() -> None:
    assert expand('{{ "température\\t%" }}') == "température\t%"


# `title` is Go's strings.Title, which upper-cases the first letter of each word and leaves
# the rest alone (Python's str.title lower-cases the rest).
def test_title_leaves_the_rest_of_each_word_alone() -> None:
    assert expand('{{ "hELLO wORLD foo-bar" | title }}') == "HELLO WORLD Foo-Bar"


# reReplaceAll's replacement is Go's regexp.Expand: "$$" is a literal "$", "$1x" names the
# group "1x" (none here, so empty), and a backslash is literal. Prometheus 2.42's outputs:
RE_REPLACE_AS_GO = [
    ('{{ reReplaceAll "(h)" "$$" "hh" }}', "$$"),
    ('{{ reReplaceAll "(o)" "$1x" "foo" }}', "f"),
    ('{{ reReplaceAll "o" "\\\\n" "foo" }}', "f\\n\\n"),
]


@pytest.mark.parametrize(("text", "want"), RE_REPLACE_AS_GO, ids=[t for t, _ in RE_REPLACE_AS_GO])
def test_re_replace_all_expands_the_replacement_as_go(text: str, want: str) -> None:
    assert expand(text) == want


# A trim marker trims Go's white space (space, tab, CR, LF) only, not a no-break space.
def test_a_trim_marker_leaves_a_no_break_space() -> None:
    assert expand("x\u00a0{{- 1 }}") == "x\u00a01"


# -- refused when parsed ---------------------------------------------------------------------------

REFUSED = [
    ("{{ if $value }}high{{ end }}", "if"),
    ("{{ if gt $value 1.0 }}high{{ else }}low{{ end }}", "if"),
    ("{{ range $labels }}x{{ end }}", "range"),
    ("{{ with $labels.job }}{{ . }}{{ end }}", "with"),
    ('{{ define "x" }}y{{ end }}', "define"),
    ('{{ template "x" }}', "template"),
    ('{{ query "up" }}', "query"),
    ('{{ with query "up" }}{{ . | first | value }}{{ end }}', "with"),
    ('{{ query "up" | first | value }}', "query"),
    ("{{ frobnicate $value }}", "frobnicate"),
    ("{{ $value | nosuchfn }}", "nosuchfn"),
    ("{{ $foo }}", "$foo"),
    ("{{ $foo.bar }}", "$foo"),
    ("{{ $value ", "unclosed action"),
    ("{{ $value }} and {{ $labels.job", "unclosed action"),
    ("{{ $value }", "unclosed action"),
    ("{{/* never closed }}", "unclosed comment"),
    ("{{ }}", "missing value"),
    ('{{ "unterminated }}', "unexpected"),
]


@pytest.mark.parametrize(("text", "construct"), REFUSED, ids=[t for t, _ in REFUSED])
def test_outside_the_subset_is_refused_when_parsed_with_the_construct_named(
    text: str, construct: str
) -> None:
    with pytest.raises(TemplateError) as raised:
        Template(text, "rules.yml: annotations.summary")
    message = raised.value.message
    assert construct in message
    assert message.startswith("rules.yml: annotations.summary: ")
    assert "\n" not in message
    assert isinstance(raised.value, BadInput)


def test_refusals_name_the_construct_precisely() -> None:
    def refusal(text: str) -> str:
        with pytest.raises(TemplateError) as raised:
            Template(text, "t")
        return raised.value.message

    assert refusal("{{ if $value }}x{{ end }}") == "t: 'if' blocks are not supported by fleetpulse"
    assert refusal("{{ range $labels }}x{{ end }}") == (
        "t: 'range' blocks are not supported by fleetpulse"
    )
    assert refusal('{{ query "up" }}') == (
        "t: template function 'query' is not supported by fleetpulse"
    )
    assert refusal("{{ frobnicate 1 }}") == 't: function "frobnicate" not defined'
    assert refusal("{{ $foo }}") == "t: undefined variable '$foo'"
    assert refusal("{{ $value") == "t: unclosed action"


# Templates Go's parser (so promtool) refuses: fleetpulse refuses them too, so that every
# template fleetpulse accepts is one Go accepts. promtool 2.42's errors:
GO_REFUSES = [
    # unexpected "/" in command: a comment must follow "{{" (or "{{- ") at once
    "a {{ /* c */ }} b",
    # comment ends before closing delimiter
    "a {{/* c */ }} b",
    # non executable command in pipeline stage 2
    "{{ $value | 5 }}",
    '{{ $value | "x" }}',
    # invalid syntax (\q is no escape)
    '{{ "a\\qb" }}',
]


@pytest.mark.parametrize("text", GO_REFUSES)
def test_what_gos_parser_refuses_is_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        Template(text, "t")
