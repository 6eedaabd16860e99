#!/usr/bin/env python3
"""Checks the alert rules against their runbooks and unit tests, and lists the metric
names that the rules and the dashboard use.

Usage (from anywhere; paths are relative to this file's repository):
  check_alerts.py              check; exit 0 when all is well, 1 with every problem listed
  check_alerts.py --names      print the metric names used by alerts.yaml and
                               dashboard.json, sorted, one per line; exit 0
  check_alerts.py --self-test  prove that each kind of problem below is caught, and that
                               the name extraction reads PromQL right

The check (needs PyYAML) fails when:
  - an alert lacks a `severity` label of critical or warning, or one of the annotations
    `summary`, `description`, `runbook_url`; or two alerts share a name;
  - a `runbook_url` is not RUNBOOK_BASE + '#anchor', or docs/runbooks.md has no heading
    whose GitHub anchor is that anchor; or a `## ` section of the runbooks belongs to no
    alert;
  - alerts.test.yaml does not load alerts.yaml, or an alert has no test case where it
    fires (an alert_rule_test for it with non-empty exp_alerts), or no test case where it
    is only ever expected silent (`exp_alerts: []`) on healthy series.

--names prints the names exactly as a scrape of /metrics shows them (a counter with its
`_total`, a histogram's `_bucket`, `_sum` and `_count` series as used), so that a test can
compare them with a real scrape of auth-service and auth-agent. It needs only the Python
standard library: the `expr:` values are read by a small line-based reader that the check
mode proves equal to PyYAML's reading of the same files. Names come from every alerting
and recording rule expression in alerts.yaml, and from every panel target and template
variable query (`label_values(metric, label)`, `query_result(...)`) in dashboard.json;
names that a recording rule defines are left out, as they are never scraped.
"""

import json
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ALERTS = HERE / "alerts.yaml"
TESTS = HERE / "alerts.test.yaml"
DASHBOARD = HERE / "dashboard.json"
RUNBOOKS = REPO / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/example-org/auth-service/blob/main/docs/runbooks.md"
SEVERITIES = {"critical", "warning"}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")


# --- PromQL: the metric names in an expression ------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)(?![\w:])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)
# Words PromQL reserves: operators, modifiers and the aggregations (whose grouping may sit
# between the word and its parenthesis, as in `sum by (job) (...)`).
_KEYWORDS = {
    "and", "or", "unless", "atan2", "bool", "offset", "inf", "nan",
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


class PromQLError(ValueError):
    pass


def _tokens(expr):
    pos = 0
    out = []
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"cannot read PromQL at {expr[pos:pos + 30]!r}")
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
    return out


def metric_names(expr):
    """The metric names an expression selects, as a set. Raises PromQLError on what it
    cannot read (a regular expression on __name__, an unknown character)."""
    toks = _tokens(expr)
    names = set()
    i = 0
    brace = False
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else (None, None)
        if brace:
            if text == "}":
                brace = False
            elif kind == "ident" and text == "__name__":
                op, value = toks[i + 1][1], toks[i + 2]
                if op != "=" or value[0] != "string":
                    raise PromQLError(f"__name__ must be matched with = and a string in {expr!r}")
                names.add(value[1][1:-1])
                i += 2
            i += 1
            continue
        if text == "{":
            brace = True
        elif text == "[":
            # A range or subquery: durations, a colon, a step; nothing to name.
            while toks[i][1] != "]":
                i += 1
        elif kind == "ident" and text.lower() in _GROUPING:
            # The label list that follows (optional after group_left/group_right).
            if nxt[1] == "(":
                i += 1
                while toks[i][1] != ")":
                    i += 1
        elif kind == "ident" and text.lower() in _KEYWORDS:
            pass
        elif kind == "ident" and nxt[1] == "(":
            pass  # a function
        elif kind == "ident":
            names.add(text)
        i += 1
    return names


# --- Reading expr: values without PyYAML ----------------------------------------------

def _yaml_scalar(text, where):
    text = text.strip()
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise ValueError(f"{where}: unterminated single-quoted scalar")
        return text[1:-1].replace("''", "'")
    if text.startswith('"'):
        return json.loads(text)
    if text[:1] in "|>&*!%@`[{":
        raise ValueError(f"{where}: unsupported scalar {text[:20]!r}")
    return re.sub(r"\s+#.*$", "", text)


def read_exprs(path):
    """Every `expr:` value in a rule file, in order, read line by line: plain, quoted and
    literal block (`|`, `|-`) scalars. Anything else is an error, so that the check mode,
    which compares this with PyYAML, fails instead of a name going missing."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    exprs = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:- )?expr:\s*(.*?)\s*$", lines[i])
        i += 1
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2)
        where = f"{path}:{i}"
        if value in ("|", "|-", "|+"):
            block = []
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            if not block:
                raise ValueError(f"{where}: empty block scalar")
            cut = min(len(b) - len(b.lstrip()) for b in block if b.strip())
            text = "\n".join(b[cut:] for b in block)
            exprs.append(text if value == "|-" else text + "\n")
        else:
            exprs.append(_yaml_scalar(value, where))
    return exprs


def dashboard_exprs(dashboard):
    """(where, PromQL) for every panel target and template variable query."""
    out = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels") or [])

    for p in panels(dashboard.get("panels") or []):
        for t in p.get("targets") or []:
            if t.get("expr"):
                out.append((f"panel {p.get('id')} {p.get('title')!r} ref {t.get('refId')}", t["expr"]))
    for v in (dashboard.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"^\s*(?:label_values|query_result)\((.*)\)\s*$", q or "", re.S)
        if m:
            inner = m.group(1)
            if q.strip().startswith("label_values"):
                inner = inner.rsplit(",", 1)[0] if "," in inner else inner
            out.append((f"variable {v.get('name')}", inner))
        elif q and not q.strip().startswith(("label_names", "metrics")):
            out.append((f"variable {v.get('name')}", q))
    return out


GRAFANA_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|([A-Za-z0-9_]+))")


def substitute(expr):
    """The expression with Grafana's variables replaced by something PromQL accepts:
    intervals by 5m, anything else (a label value) by the regex .*"""
    def repl(m):
        name = m.group(1) or m.group(2)
        return "5m" if name in ("__rate_interval", "__interval", "__range") else ".*"
    return GRAFANA_VARIABLE.sub(repl, expr)


def used_names(alert_exprs, dash, recorded=()):
    names = set()
    for expr in alert_exprs:
        names |= metric_names(expr)
    for _, expr in dashboard_exprs(dash):
        names |= metric_names(substitute(expr))
    return sorted(names - set(recorded))


# --- The check ----------------------------------------------------------------------------

def github_anchor(heading):
    """The id GitHub gives a Markdown heading: lowercase, punctuation dropped, spaces as
    hyphens (a repeated heading gets -1, -2, ...)."""
    text = unicodedata.normalize("NFC", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors(markdown):
    anchors, sections, seen = set(), [], {}
    in_code = False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = github_anchor(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        anchor = base if n == 0 else f"{base}-{n}"
        anchors.add(anchor)
        if m.group(1) == "##":
            sections.append((m.group(2), anchor))
    return anchors, sections


def check(rules_doc, tests_doc, markdown, alerts_text_exprs=None):
    """Every problem, as a list of sentences."""
    problems = []
    alerts = []
    yaml_exprs = []
    for group in rules_doc.get("groups") or []:
        for rule in group.get("rules") or []:
            yaml_exprs.append(rule.get("expr"))
            if "alert" in rule:
                alerts.append(rule)
    if alerts_text_exprs is not None and alerts_text_exprs != yaml_exprs:
        problems.append("the line-based expr reader (used by --names) disagrees with PyYAML on alerts.yaml")
    names = [a["alert"] for a in alerts]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{dup}: more than one alert has this name")

    anchors, sections = runbook_anchors(markdown)
    used_anchors = set()
    for rule in alerts:
        name = rule["alert"]
        severity = (rule.get("labels") or {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{name}: label severity is {severity!r}, not one of {sorted(SEVERITIES)}")
        ann = rule.get("annotations") or {}
        for key in REQUIRED_ANNOTATIONS:
            if not str(ann.get(key) or "").strip():
                problems.append(f"{name}: annotation {key} is missing or empty")
        url = str(ann.get("runbook_url") or "")
        if url:
            base, _, anchor = url.partition("#")
            if base != RUNBOOK_BASE or not anchor:
                problems.append(f"{name}: runbook_url {url} is not {RUNBOOK_BASE}#<anchor>")
            elif anchor not in anchors:
                problems.append(f"{name}: docs/runbooks.md has no heading with the anchor #{anchor}")
            used_anchors.add(anchor)
    for title, anchor in sections:
        if anchor not in used_anchors:
            problems.append(f"docs/runbooks.md: section {title!r} is the runbook of no alert")

    if "alerts.yaml" not in [Path(f).name for f in tests_doc.get("rule_files") or []]:
        problems.append("alerts.test.yaml: rule_files does not list alerts.yaml")
    firing, silent_cases = set(), {}
    for case in tests_doc.get("tests") or []:
        expectations = {}
        for t in case.get("alert_rule_test") or []:
            expectations.setdefault(t.get("alertname"), []).append(bool(t.get("exp_alerts")))
        for alert, fired in expectations.items():
            if any(fired):
                firing.add(alert)
            else:
                silent_cases.setdefault(alert, []).append(case.get("name"))
    for name in names:
        if name not in firing:
            problems.append(f"{name}: no test case in alerts.test.yaml where it fires")
        if name not in silent_cases:
            problems.append(f"{name}: no test case in alerts.test.yaml that expects it silent on healthy series")
    for alert in sorted((firing | set(silent_cases)) - set(names)):
        problems.append(f"alerts.test.yaml: tests an alert that alerts.yaml does not define: {alert}")
    return problems


def self_test():
    import copy
    import yaml

    rules = yaml.safe_load(ALERTS.read_text())
    tests = yaml.safe_load(TESTS.read_text())
    markdown = RUNBOOKS.read_text()
    assert check(rules, tests, markdown) == [], check(rules, tests, markdown)
    first = rules["groups"][0]["rules"][0]
    name = first["alert"]

    def expect(what, r=rules, t=tests, md=markdown):
        got = check(r, t, md)
        assert any(what in p for p in got), f"{what!r} not caught; got {got}"

    for key in REQUIRED_ANNOTATIONS:
        r = copy.deepcopy(rules)
        del r["groups"][0]["rules"][0]["annotations"][key]
        expect(f"{name}: annotation {key} is missing", r=r)
    r = copy.deepcopy(rules)
    r["groups"][0]["rules"][0]["labels"]["severity"] = "page"
    expect(f"{name}: label severity", r=r)
    r = copy.deepcopy(rules)
    r["groups"][0]["rules"][0]["annotations"]["runbook_url"] = RUNBOOK_BASE + "#no-such-section"
    expect("no heading with the anchor #no-such-section", r=r)
    r = copy.deepcopy(rules)
    r["groups"][0]["rules"][0]["annotations"]["runbook_url"] = "https://example.com/runbook"
    expect("is not " + RUNBOOK_BASE, r=r)
    expect(f"section '{name}Extra' is the runbook of no alert",
           md=markdown.replace(f"## {name}\n", f"## {name}\n\n## {name}Extra\n", 1))
    r = copy.deepcopy(rules)
    r["groups"][0]["rules"].append(copy.deepcopy(first))
    expect(f"{name}: more than one alert", r=r)
    for keep_firing in (False, True):
        t = copy.deepcopy(tests)
        for case in t["tests"]:
            for art in case.get("alert_rule_test") or []:
                if art["alertname"] == name and bool(art.get("exp_alerts")) != keep_firing:
                    art["alertname"] = "SomethingElse"
        expect(f"{name}: no test case in alerts.test.yaml " +
               ("that expects it silent" if keep_firing else "where it fires"), t=t)
    t = copy.deepcopy(tests)
    t["rule_files"] = ["other.yaml"]
    expect("rule_files does not list alerts.yaml", t=t)

    cases = {
        'sum by (job, le) (rate(a_bucket{x="y", le!="1"}[5m] offset 1h)) / on (job) group_left (z) b_total':
            {"a_bucket", "b_total"},
        "histogram_quantile(0.99, sum without (instance) (rate(c_seconds_bucket[$__rate_interval])))":
            {"c_seconds_bucket"},
        'max_over_time(d[1h:5m]) > bool 3 * 86400 and ignoring (cause) {__name__="e_total", f="g"} unless h':
            {"d", "e_total", "h"},
        "count(i == 1) by (state) or vector(0) + topk(5, j) - inf + 1e3 + 0x1F + .5 and k @ start()":
            {"i", "j", "k"},
        'label_replace(l, "dst", "$1", "src", "(.*)") atan2 m':
            {"l", "m"},
    }
    for expr, want in cases.items():
        got = metric_names(substitute(expr))
        assert got == want, f"{expr}: got {sorted(got)}, want {sorted(want)}"
    for bad in ('{__name__=~"auth_.*"}', "a ? b"):
        try:
            metric_names(bad)
        except PromQLError:
            continue
        raise AssertionError(f"{bad!r} was not refused")
    for text, want in (("expr: up == 0\n", ["up == 0"]), ("  - expr: 'a{b=\"c\"}'  \n", ['a{b="c"}']),
                       ("expr: |\n  a\n\n    / b\nfor: 1m\n", ["a\n\n  / b\n"])):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rules.yaml"
            path.write_text(text)
            got = read_exprs(path)
        assert got == want, f"{text!r}: got {got}, want {want}"
    print("check_alerts.py self-test: every problem is caught, PromQL names are read right")
    return 0


def main(argv):
    if argv == ["--names"]:
        exprs = read_exprs(ALERTS)
        recorded = [m.group(1) for m in re.finditer(r"(?m)^\s*-?\s*record:\s*(\S+)", ALERTS.read_text())]
        dash = json.loads(DASHBOARD.read_text()) if DASHBOARD.exists() else {}
        for name in used_names(exprs, dash, recorded):
            print(name)
        return 0
    if argv == ["--self-test"]:
        return self_test()
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    import yaml

    rules = yaml.safe_load(ALERTS.read_text())
    tests = yaml.safe_load(TESTS.read_text())
    problems = check(rules, tests, RUNBOOKS.read_text(), alerts_text_exprs=read_exprs(ALERTS))
    try:
        dash = json.loads(DASHBOARD.read_text()) if DASHBOARD.exists() else {}
        names = used_names(read_exprs(ALERTS), dash)
    except (PromQLError, ValueError) as e:
        problems.append(f"cannot list the metric names: {e}")
        names = []
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        return 1
    alerts = sum(1 for g in rules["groups"] for r in g["rules"] if "alert" in r)
    print(f"check_alerts.py: {alerts} alerts, each with summary, description, a runbook section, "
          f"a firing and a healthy test case; {len(names)} metric names in use")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
