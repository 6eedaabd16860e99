#!/usr/bin/env python3
"""Validates Kubernetes manifests with kubernetes-validate --strict semantics, and names
every object it could not validate.

Usage: check_k8s.py [--no-custom] FILE...
         check_k8s.py --self-test   prove that a typo'd kind or field is caught
  exit 0 when every object is valid; 1 otherwise. --no-custom: a custom resource fails
  too (for files that must hold core objects only).

Each object is checked against the schemas of the newest Kubernetes version the installed
kubernetes-validate knows, in strict mode (an unknown field fails). Custom resources
have no schema there. Left alone, a validator reports "no schema" for them and for a
misspelt core kind alike (kind: Deploymnet, apiVersion: app/v1), so here a custom
resource is skipped only when its exact (apiVersion, kind) is listed in CUSTOM_RESOURCES
below, and is reported by kind; any other object without a schema fails.
"""

import sys

import yaml
from kubernetes_validate import utils as kv

# The custom resources this repository uses, by apiVersion: the only objects allowed to
# go unvalidated. Add a kind here when an example starts using it.
CUSTOM_RESOURCES = {
    "cert-manager.io/v1": {"Certificate", "ClusterIssuer", "Issuer"},
    "monitoring.coreos.com/v1": {"ServiceMonitor", "PrometheusRule"},
    "postgresql.cnpg.io/v1": {"Cluster", "Pooler"},
    "install.istio.io/v1alpha1": {"IstioOperator"},
    "networking.istio.io/v1": {"DestinationRule"},
    "networking.istio.io/v1alpha3": {"EnvoyFilter"},
    "security.istio.io/v1": {"AuthorizationPolicy"},
    "traefik.io/v1alpha1": {"IngressRoute", "Middleware"},
}


def describe(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def check_doc(doc, version, allow_custom):
    """Returns (status, message): status is 'ok', 'skip' or 'FAIL'."""
    if not isinstance(doc, dict):
        return "FAIL", f"not a mapping: {doc!r:.60}"
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not api_version or not kind:
        return "FAIL", "apiVersion and kind are required"
    if not (doc.get("metadata") or {}).get("name"):
        return "FAIL", f"{kind}: metadata.name is required"
    if kind in CUSTOM_RESOURCES.get(api_version, ()):
        if not allow_custom:
            return "FAIL", f"{describe(doc)}: custom resource ({api_version}) where only core objects belong"
        return "skip", f"{describe(doc)}: custom resource {kind} ({api_version}), no schema to check it against"
    try:
        kv.validate(doc, version, strict=True)
    except kv.SchemaNotFoundError:
        return "FAIL", (
            f"{describe(doc)}: no schema for kind {kind} in {api_version}: a misspelt kind or "
            "apiVersion, or a custom resource missing from CUSTOM_RESOURCES in deploy/check_k8s.py"
        )
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(top level)"
        return "FAIL", f"{describe(doc)}: {path}: {e.message}"
    return "ok", describe(doc)


def self_test():
    """Each case must get the status it names; a typo'd kind must never pass as 'skip'."""
    version = kv.latest_version()
    meta = {"name": "x"}
    cases = [
        ("ok", True, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}),
        ("skip", True, {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": meta}),
        ("FAIL", False, {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": meta}),
        ("FAIL", True, {"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": meta}),
        ("FAIL", True, {"apiVersion": "app/v1", "kind": "Deployment", "metadata": meta}),
        ("FAIL", True, {"apiVersion": "cert-manager.io/v1", "kind": "Certificat", "metadata": meta}),
        ("FAIL", True, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "dta": {}}),
        ("FAIL", True, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
    ]
    wrong = []
    for expected, allow_custom, doc in cases:
        status, message = check_doc(doc, version, allow_custom)
        if status != expected:
            wrong.append(f"expected {expected}, got {status}: {message}")
    if wrong:
        print("self-test FAILED:\n  " + "\n  ".join(wrong))
        return 1
    print(f"self-test: all {len(cases)} cases classified as expected")
    return 0


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    allow_custom = True
    if argv[:1] == ["--no-custom"]:
        allow_custom, argv = False, argv[1:]
    if not argv or any(a.startswith("-") for a in argv):
        print("\n".join(__doc__.splitlines()[3:5]), file=sys.stderr)
        return 2
    version = kv.latest_version()
    counts = {"ok": 0, "skip": 0, "FAIL": 0}
    for path in argv:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            print(f"FAIL {path}: no objects")
            counts["FAIL"] += 1
        for doc in docs:
            status, message = check_doc(doc, version, allow_custom)
            counts[status] += 1
            print(f"{status:4} {path}: {message}")
    print(
        f"Kubernetes {version} schemas, strict: {counts['ok']} valid, {counts['skip']} custom "
        f"resources skipped, {counts['FAIL']} failed"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
