"""Rendering the charts under deploy/helm/ without a helm binary, through helm-python-sdk
(Helm's own Go SDK behind a C ABI), for deploy/helm/render-k8s and check_chart.py.

Rendering goes through Helm's engine exactly as `helm template` does: values are merged
with the chart's defaults and checked against values.schema.json first, then every
template is rendered; the `lookup` function sees no cluster.
"""

import re
from pathlib import Path

import helm_python as helm
import yaml

HELM_DIR = Path(__file__).resolve().parent
REPO = HELM_DIR.parent.parent

# Helm's own log lines (e.g. each `fail` seen while linting) would only repeat what the
# callers print.
helm.disable_logging()


def load_values(path):
    """A values file as a dict ({} for an empty file)."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def render(chart_dir, values, release, namespace):
    """Renders a chart; returns [(template path, manifest text)] in template order, without
    NOTES.txt and without templates that rendered to nothing but whitespace.

    Raises helm.HelmError (HelmValuesError for a schema violation, HelmRenderError for a
    template's `fail`) with Helm's message.
    """
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name=release, namespace=namespace)
    return [
        (path, text)
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt") and text.strip()
    ]


def notes(chart_dir, values, release, namespace):
    """The rendered NOTES.txt."""
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name=release, namespace=namespace)
    return next((text for path, text in rendered.items() if path.endswith("NOTES.txt")), "")


def documents(text):
    """Splits one rendered template into its YAML documents, each as text with its own
    leading comments; drops documents that hold only comments (a disabled object's)."""
    docs = []
    for chunk in re.split(r"^---[ \t]*$", text, flags=re.MULTILINE):
        chunk = chunk.strip("\n")
        lines = [line for line in chunk.splitlines() if line.strip()]
        if any(not line.lstrip().startswith("#") for line in lines):
            docs.append("\n".join(line.rstrip() for line in chunk.splitlines()).strip("\n"))
    return docs


def join(docs, header=""):
    """One multi-document YAML file: the header comment, then the documents."""
    return header + "\n---\n".join(docs) + "\n"


def template_name(path):
    """'auth-service/templates/deployment.yaml' -> 'deployment.yaml'."""
    return path.split("/templates/", 1)[1]
