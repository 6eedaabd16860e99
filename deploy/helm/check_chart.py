#!/usr/bin/env python3
"""Lints and renders the charts under deploy/helm/ through Helm's Go SDK (helm-python-sdk),
without a helm binary or a cluster; .ci/check-deploy runs it.

Usage: check_chart.py OUTDIR
  exit 0 when every check passes, 1 on the first failure. Writes each scenario's rendered
  manifests to OUTDIR/<chart>--<scenario>.yaml, for the checks that follow it in
  .ci/check-deploy (yamllint, check_k8s.py, check_pss.py).

For each chart:
  1. `helm lint --strict` (the SDK's lint) with each scenario's values: no warning, no error;
  2. every scenario renders: the defaults, every optional feature on
     (ci/features-values.yaml), every value set (ci/full-values.yaml), and the values files
     the repository ships (deploy/helm/production-values.yaml, the CloudNativePG example);
  3. in each render, the objects are consistent with each other: the kinds the scenario
     must (and must not) produce, every Service, PodDisruptionBudget, NetworkPolicy and
     HPA aims at the server pods and at no job's pods, the ServiceMonitor matches exactly
     one Service, every file a variable names is inside a mounted volume, and the
     variables the scenario must set are there;
  4. each ci/invalid/*.yaml fails the render with the message its first line names
     (`# expect: <text>`), so a rule cannot silently stop working.
"""

import sys
from pathlib import Path

import helm_python as helm
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import charts  # noqa: E402

SERVICE = charts.HELM_DIR / "auth-service"
AGENT = charts.HELM_DIR / "auth-agent-example"

ALWAYS = {"ServiceAccount", "Deployment", "Service"}
SERVICE_ENV_ALWAYS = {
    "AUTH_SERVICE_DATABASE_URL_FILE", "AUTH_SERVICE_REPLICA_NAME", "AUTH_SERVICE_LOG_FORMAT",
    "AUTH_SERVICE_LISTEN", "AUTH_SERVICE_HTTP_LISTEN", "AUTH_SERVICE_DB_MAX_CONNECTIONS",
    "AUTH_SERVICE_MAX_CONNECTION_AGE", "AUTH_SERVICE_MAX_CONNECTION_AGE_GRACE",
    "AUTH_SERVICE_CACHE_MAX_STALENESS", "AUTH_SERVICE_SHUTDOWN_GRACE",
}
SERVICE_ENV_FEATURES = SERVICE_ENV_ALWAYS | {
    "AUTH_SERVICE_NO_MIGRATE", "AUTH_SERVICE_DATABASE_LISTEN_URL_FILE",
    "AUTH_SERVICE_TLS_CERT", "AUTH_SERVICE_TLS_KEY", "AUTH_SERVICE_TLS_CLIENT_CA",
    "AUTH_SERVICE_VALIDATE_ALLOW", "AUTH_SERVICE_FORWARD_AUTH_ALLOW",
    "AUTH_SERVICE_NOTIFY_WEBHOOK", "AUTH_SERVICE_NOTIFY_BEFORE", "AUTH_SERVICE_NOTIFY_INTERVAL",
    "AUTH_SERVICE_NOTIFY_SECRET_FILE",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES",
}

# (chart, scenario, values file or None, release, namespace, expectations)
SCENARIOS = [
    (SERVICE, "defaults", None, "auth-service", "auth", {
        "kinds": ALWAYS | {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Job", "CronJob"},
        "absent": {"Certificate", "ServiceMonitor", "PrometheusRule"},
        "env": SERVICE_ENV_ALWAYS | {"AUTH_SERVICE_NO_MIGRATE"},
        "no_env_prefix": ("OTEL_", "AUTH_SERVICE_TLS_", "AUTH_SERVICE_NOTIFY_"),
    }),
    (SERVICE, "features", SERVICE / "ci/features-values.yaml", "auth-service", "auth", {
        "kinds": ALWAYS | {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Job",
                           "CronJob", "Certificate", "ServiceMonitor", "PrometheusRule"},
        "env": SERVICE_ENV_FEATURES,
    }),
    (SERVICE, "full", SERVICE / "ci/full-values.yaml", "auth-service", "auth", {
        "kinds": ALWAYS | {"PodDisruptionBudget", "NetworkPolicy", "Job", "CronJob", "ServiceMonitor",
                           "PrometheusRule"},
        "absent": {"HorizontalPodAutoscaler", "Certificate"},
        "env": SERVICE_ENV_FEATURES | {"AUTH_SERVICE_DB_TIMEOUT", "AUTH_SERVICE_POD_IP"},
    }),
    (SERVICE, "production", charts.REPO / "deploy/helm/production-values.yaml", "auth-service", "auth", {
        "kinds": ALWAYS | {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Job",
                           "CronJob", "Certificate"},
        "env": SERVICE_ENV_ALWAYS | {"AUTH_SERVICE_TLS_CLIENT_CA", "AUTH_SERVICE_VALIDATE_ALLOW"},
    }),
    (SERVICE, "cnpg-pooler", charts.REPO / "deploy/examples/cnpg-pooler-values.yaml", "auth-service", "auth", {
        "kinds": ALWAYS | {"HorizontalPodAutoscaler", "Job"},
        "env": SERVICE_ENV_ALWAYS | {"AUTH_SERVICE_DATABASE_LISTEN_URL_FILE"},
    }),
    (AGENT, "defaults", None, "example-app", "default", {
        "kinds": {"ServiceAccount", "Deployment", "Certificate"},
    }),
    (AGENT, "existing-secret", AGENT / "ci/existing-secret-values.yaml", "example-app", "default", {
        "kinds": {"ServiceAccount", "Deployment"},
        "absent": {"Certificate"},
    }),
    (AGENT, "example-app", charts.REPO / "deploy/helm/example-app-values.yaml", "example-app", "default", {
        "kinds": {"ServiceAccount", "Deployment", "Certificate"},
    }),
]


class Failure(Exception):
    pass


def rel(path):
    return str(Path(path).relative_to(charts.REPO))


def lint(chart, values, label):
    report = helm.lint(str(chart), values, strict=True)
    problems = [m for m in report.get("messages") or [] if m.get("severity", 0) >= 2]
    problems += [{"error": e} for e in report.get("errors") or []]
    if problems:
        raise Failure(f"helm lint --strict {label}: " + "; ".join(str(p.get("error")) for p in problems))
    notes = sorted({m["error"] for m in report.get("messages") or []})
    print(f"ok   lint {label}" + (f" (info: {', '.join(notes)})" if notes else ""))


def matches(selector, labels):
    """Kubernetes label-selector semantics for matchLabels and matchExpressions."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_templates(doc):
    kind, spec = doc["kind"], doc.get("spec") or {}
    if kind in ("Deployment", "Job"):
        return [spec["template"]]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    return []


def check_objects(docs, expect, label):
    kinds = {d["kind"] for d in docs}
    missing = set(expect.get("kinds", ())) - kinds
    if missing:
        raise Failure(f"{label}: expected {', '.join(sorted(missing))}, rendered {', '.join(sorted(kinds))}")
    unwanted = set(expect.get("absent", ())) & kinds
    if unwanted:
        raise Failure(f"{label}: rendered {', '.join(sorted(unwanted))}, which this scenario turns off")

    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        raise Failure(f"{label}: expected one Deployment, found {len(deployments)}")
    deployment = deployments[0]
    server_labels = deployment["spec"]["template"]["metadata"]["labels"]
    if not matches(deployment["spec"]["selector"], server_labels):
        raise Failure(f"{label}: the Deployment's selector does not match its own pods")
    other_pods = [(d, t["metadata"].get("labels") or {}) for d in docs if d["kind"] != "Deployment"
                  for t in pod_templates(d)]

    def aims_at_server(what, selector):
        if not matches(selector, server_labels):
            raise Failure(f"{label}: {what} does not select the server pods")
        for owner, pod_labels in other_pods:
            if matches(selector, pod_labels):
                raise Failure(f"{label}: {what} also selects the pods of {owner['kind']}/{owner['metadata']['name']}")

    services = [d for d in docs if d["kind"] == "Service"]
    for d in services:
        aims_at_server(f"Service/{d['metadata']['name']}", {"matchLabels": d["spec"]["selector"]})
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "PodDisruptionBudget":
            aims_at_server(name, d["spec"]["selector"])
        elif d["kind"] == "NetworkPolicy":
            aims_at_server(name, d["spec"]["podSelector"])
        elif d["kind"] == "HorizontalPodAutoscaler":
            if d["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]:
                raise Failure(f"{label}: {name} scales {d['spec']['scaleTargetRef']['name']}, not the Deployment")
            if "replicas" in deployment["spec"]:
                raise Failure(f"{label}: the Deployment sets replicas although {name} owns the count")
        elif d["kind"] == "ServiceMonitor":
            hits = [s["metadata"]["name"] for s in services
                    if matches(d["spec"]["selector"], s["metadata"].get("labels") or {})]
            if len(hits) != 1:
                raise Failure(f"{label}: {name} matches {len(hits)} Services ({', '.join(hits)}); each pod "
                              "must be scraped once")

    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    if label.startswith("auth-service") and len(headless) != 1:
        raise Failure(f"{label}: expected one headless Service beside the ClusterIP one")

    # Every file a variable names must be inside a volume the container mounts.
    for d in docs:
        for template in pod_templates(d):
            spec = template["spec"]
            for c in (spec.get("initContainers") or []) + spec["containers"]:
                mounts = [m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts") or []]
                for env in c.get("env") or []:
                    value = env.get("value") or ""
                    if env["name"].endswith(("_FILE", "_CERT", "_KEY", "_CA")) and value.startswith("/"):
                        if not any(value.startswith(m) for m in mounts):
                            raise Failure(f"{label}: {d['kind']}/{d['metadata']['name']} {c['name']}: "
                                          f"{env['name']}={value} is in no mounted volume")

    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"] for e in container.get("env") or []}
    missing = set(expect.get("env", ())) - env
    if missing:
        raise Failure(f"{label}: the server container lacks {', '.join(sorted(missing))}")
    for prefix in expect.get("no_env_prefix", ()):
        found = sorted(e for e in env if e.startswith(prefix))
        if found:
            raise Failure(f"{label}: {', '.join(found)} set although this scenario leaves them off")


def scenario(chart, name, values_file, release, namespace, expect, outdir):
    values = charts.load_values(values_file) if values_file else {}
    source = rel(values_file) if values_file else "default values"
    label = f"{chart.name} ({name}: {source})"
    lint(chart, values, label)
    try:
        rendered = charts.render(chart, values, release, namespace)
    except helm.HelmError as e:
        raise Failure(f"render {label}: {e}") from None
    texts = [doc for _, text in rendered for doc in charts.documents(text)]
    docs = [yaml.safe_load(t) for t in texts]
    check_objects(docs, expect, f"{chart.name} ({name})")
    out = Path(outdir) / f"{chart.name}--{name}.yaml"
    head = f"# {chart.name}, {source}\n# release {release}, namespace {namespace}\n"
    out.write_text(charts.join(texts, head), encoding="utf-8")
    kinds = ", ".join(sorted({d["kind"] for d in docs}))
    print(f"ok   render {label}: {len(docs)} objects ({kinds}) -> {out}")
    if not charts.notes(chart, values, release, namespace).strip():
        raise Failure(f"{label}: NOTES.txt rendered empty")


def invalid(chart, release, namespace):
    files = sorted((chart / "ci/invalid").glob("*.yaml"))
    if not files:
        raise Failure(f"{rel(chart)}/ci/invalid holds no values files")
    for path in files:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        if not first.startswith("# expect: "):
            raise Failure(f"{rel(path)}: the first line must be '# expect: <part of the error message>'")
        expected = first[len("# expect: "):].strip()
        try:
            charts.render(chart, charts.load_values(path), release, namespace)
        except helm.HelmError as e:
            message = str(e)
            if expected not in message:
                raise Failure(f"{rel(path)}: refused, but not with '{expected}':\n{message}") from None
            print(f"ok   refused {rel(path)}: {expected}")
            continue
        raise Failure(f"{rel(path)}: rendered, but must fail with '{expected}'")


def main(argv):
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__.splitlines()[3], file=sys.stderr)
        return 2
    Path(argv[0]).mkdir(parents=True, exist_ok=True)
    print(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__})")
    try:
        for spec in SCENARIOS:
            scenario(*spec, argv[0])
        invalid(SERVICE, "auth-service", "auth")
        invalid(AGENT, "example-app", "default")
    except Failure as e:
        print(f"FAIL {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
