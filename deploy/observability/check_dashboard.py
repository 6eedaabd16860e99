#!/usr/bin/env python3
"""Checks the Grafana dashboard: valid JSON, a sound layout and template variables, and
every PromQL expression in it accepted by promtool.

Usage: check_dashboard.py [FILE]     default deploy/observability/dashboard.json; exit 0
                                     when all is well, 1 with every problem listed
       check_dashboard.py --self-test prove that each kind of problem below is caught

Needs promtool (Debian: apt-get install prometheus) and the Python standard library.

It fails when:
  - the file is not JSON, or lacks a title, a uid, or schemaVersion 36 or later;
  - there is no `datasource` variable of type datasource for Prometheus, or no query
    variable named `instance` or `pod`;
  - a panel has no unique id, no gridPos inside the 24-column grid, or overlaps another;
    a panel that shows data does not take its data source from ${datasource}, has no
    target, or two targets share a refId;
  - an expression names a variable that is neither defined nor one of Grafana's
    ($__rate_interval, $__interval, $__range, ...);
  - promtool does not accept an expression: each distinct one (panel targets, and the
    selector inside `label_values(...)` variable queries), with its variables replaced
    ($__rate_interval and friends by 5m, any other by the regex .*), becomes a
    recording rule in a throwaway rule file for `promtool check rules`.
"""

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ in the work tree
from check_alerts import GRAFANA_VARIABLE, dashboard_exprs, substitute  # noqa: E402

DASHBOARD = HERE / "dashboard.json"
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                    "__range_ms", "__dashboard", "__from", "__to", "__name", "__org", "__user"}
DATASOURCE = "${datasource}"


def all_panels(items):
    for p in items:
        yield p
        yield from all_panels(p.get("panels") or [])


def check_structure(d):
    problems = []
    if not d.get("title") or not d.get("uid"):
        problems.append("the dashboard needs a title and a uid")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        problems.append(f"schemaVersion is {d.get('schemaVersion')!r}, not 36 or later")
    variables = (d.get("templating") or {}).get("list") or []
    names = {v.get("name") for v in variables}
    if not any(v.get("name") == "datasource" and v.get("type") == "datasource" and v.get("query") == "prometheus"
               for v in variables):
        problems.append("no template variable `datasource` of type datasource for prometheus")
    if not any(v.get("name") in ("instance", "pod") and v.get("type") == "query" for v in variables):
        problems.append("no query template variable named instance or pod")
    for v in variables:
        if v.get("type") == "query" and (v.get("datasource") or {}).get("uid") != DATASOURCE:
            problems.append(f"variable {v.get('name')}: data source is not {DATASOURCE}")

    ids, boxes = {}, []
    for p in all_panels(d.get("panels") or []):
        title = p.get("title")
        pid = p.get("id")
        if not isinstance(pid, int):
            problems.append(f"panel {title!r}: no numeric id")
        elif pid in ids:
            problems.append(f"panel {title!r}: id {pid} is also panel {ids[pid]!r}'s")
        else:
            ids[pid] = title
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"panel {title!r}: gridPos needs h, w, x and y")
        elif g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24 or g["h"] < 1:
            problems.append(f"panel {title!r}: gridPos {g} is outside the 24-column grid")
        else:
            for other, og in boxes:
                if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"] and
                        g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                    problems.append(f"panel {title!r} overlaps panel {other!r}")
            boxes.append((title, g))
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != DATASOURCE:
            problems.append(f"panel {title!r}: data source is not {DATASOURCE}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"panel {title!r}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problems.append(f"panel {title!r}: refIds {refs} are not distinct")
        for t in targets:
            if not (t.get("expr") or "").strip():
                problems.append(f"panel {title!r} ref {t.get('refId')}: no expr")
            if (t.get("datasource") or {}).get("uid", DATASOURCE) != DATASOURCE:
                problems.append(f"panel {title!r} ref {t.get('refId')}: data source is not {DATASOURCE}")

    for where, expr in dashboard_exprs(d):
        for m in GRAFANA_VARIABLE.finditer(expr):
            name = m.group(1) or m.group(2)
            if name not in names and name not in GRAFANA_BUILTINS:
                problems.append(f"{where}: ${name} is not a template variable")
    return problems


def check_exprs(d, promtool):
    """promtool's verdict on every distinct expression, as problems."""
    exprs = {}
    for where, expr in dashboard_exprs(d):
        exprs.setdefault(substitute(expr), []).append(where)
    rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard-exprs.rules.yaml"
        # JSON is YAML: promtool reads it as a rule file.
        path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
        r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    if r.returncode == 0:
        return [], len(exprs)
    out = (r.stdout + r.stderr).strip()
    problems = [f"promtool check rules refused the dashboard's expressions:\n{out}"]
    for i, (e, wheres) in enumerate(exprs.items()):
        # promtool numbers the rules from 1 in its messages.
        if re.search(rf"\brule {i + 1}\b", out):
            problems.append(f"rule {i + 1} is {'; '.join(wheres)}: {e}")
    return problems, len(exprs)


def run(d, promtool):
    problems = check_structure(d)
    expr_problems, n = check_exprs(d, promtool)
    return problems + expr_problems, n


def self_test(promtool):
    d = json.loads(DASHBOARD.read_text())
    got, _ = run(d, promtool)
    assert got == [], got
    data_panels = [p for p in all_panels(d["panels"]) if p.get("type") != "row"]
    first = data_panels[0]

    def expect(what, mutate):
        m = copy.deepcopy(d)
        mutate(m, next(p for p in all_panels(m["panels"]) if p.get("id") == first["id"]))
        got, _ = run(m, promtool)
        assert any(what in p for p in got), f"{what!r} not caught; got {got}"

    expect("promtool check rules refused", lambda m, p: p["targets"][0].update(expr="sum(rate(x[5m])"))
    expect(f"rule ", lambda m, p: p["targets"][0].update(expr="rate(x)"))
    expect("$nonesuch is not a template variable",
           lambda m, p: p["targets"][0].update(expr='up{job="$nonesuch"}'))
    expect("no template variable `datasource`",
           lambda m, p: m["templating"].update(list=[v for v in m["templating"]["list"] if v["name"] != "datasource"]))
    expect("no query template variable named instance or pod",
           lambda m, p: m["templating"].update(list=[v for v in m["templating"]["list"]
                                                     if v["name"] not in ("instance", "pod")]))
    expect("is also panel", lambda m, p: p.update(id=m["panels"][0]["id"]))
    expect("overlaps panel", lambda m, p: p.update(gridPos=dict(m["panels"][0]["gridPos"], h=3)))
    expect("outside the 24-column grid", lambda m, p: p["gridPos"].update(x=20, w=8))
    expect("data source is not", lambda m, p: p.update(datasource={"type": "prometheus", "uid": "prom"}))
    expect("are not distinct", lambda m, p: p["targets"].append(dict(p["targets"][0])))
    expect("schemaVersion", lambda m, p: m.update(schemaVersion=16))
    print("check_dashboard.py self-test: every problem is caught")
    return 0


def main(argv):
    promtool = shutil.which("promtool")
    if not promtool:
        print("FAIL: promtool is not installed (Debian: apt-get install prometheus)", file=sys.stderr)
        return 1
    if argv == ["--self-test"]:
        return self_test(promtool)
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0]) if argv else DASHBOARD
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"FAIL: {path}: {e}")
        return 1
    problems, n = run(d, promtool)
    for p in problems:
        print(f"FAIL: {p}")
    if problems:
        return 1
    panels = sum(1 for p in all_panels(d["panels"]) if p.get("type") != "row")
    print(f"check_dashboard.py: {path.name}: {panels} panels, {n} distinct expressions, all accepted by promtool")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
