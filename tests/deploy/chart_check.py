"""Lint, render and validate the Helm chart offline; print what was rendered as JSON.

    python3 chart_check.py CHART VALUES_JSON

Helm v4's own library (PyPI helm-python-sdk) lints and renders; every manifest is validated
against the Kubernetes schemas of the oldest and newest supported versions (PyPI
kubernetes-validate, strict: unknown fields are errors), a ServiceMonitor against the Prometheus
Operator's CRD schema (npm @kubernetes-models/prometheus-operator, through node). Any lint
warning, render error or invalid manifest exits non-zero with the reason. Run by
tests/all/deploy.rs with the tools from `scripts/dev` (SLUICE_DEPLOY_TOOLS).
"""

import json
import os
import subprocess
import sys

tools = os.environ["SLUICE_DEPLOY_TOOLS"]
sys.path.insert(0, os.path.join(tools, "python"))

import helm_python as helm  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

KUBE_VERSIONS = ["1.27.0", "1.37.0"]


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def main():
    chart_dir, values = sys.argv[1], json.loads(sys.argv[2])
    for kube in KUBE_VERSIONS:
        report = helm.lint(chart_dir, values, strict=True, kube_version=f"v{kube}")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        if problems:
            fail(f"helm lint (Kubernetes {kube}): {json.dumps(problems, indent=1)}")
    chart = helm.Chart.load(chart_dir)
    chart.validate_schema(values)
    rendered = chart.render(values, name="sluice", namespace="fleet", is_install=True)
    out = {"notes": "", "manifests": []}
    for source, text in sorted(rendered.items()):
        if source.endswith("NOTES.txt"):
            out["notes"] = text
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            if doc.get("apiVersion") == "monitoring.coreos.com/v1":
                validate_crd(doc)
            else:
                for kube in KUBE_VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, kube, strict=True)
                    except Exception as e:  # the library's errors carry the path and reason
                        fail(f"{source}: {doc['kind']} is not valid for Kubernetes {kube}: {e}")
            out["manifests"].append({"source": source, "doc": doc})
    json.dump(out, sys.stdout)


def validate_crd(doc):
    script = (
        f'import {{ {doc["kind"]} }} from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/{doc["kind"]}";'
        "let s=''; process.stdin.on('data', d => s += d).on('end', () => {"
        f" try {{ new {doc['kind']}(JSON.parse(s)).validate(); }}"
        " catch (e) { console.error(e.message); process.exit(1); } });"
    )
    node = subprocess.run(
        ["node", "--input-type=module", "-e", script],
        input=json.dumps(doc), text=True, capture_output=True, cwd=os.path.join(tools, "node"),
    )
    if node.returncode != 0:
        fail(f"{doc['kind']} does not fit the Prometheus Operator's CRD: {node.stderr.strip()}")


if __name__ == "__main__":
    main()
