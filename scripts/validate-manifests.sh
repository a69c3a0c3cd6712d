#!/usr/bin/env bash
# Validates the Kubernetes manifests offline, without a cluster:
#  1. every resource of every *.yaml / *.yml file under DIR against the OpenAPI schemas of fixed Kubernetes
#     versions, with kubernetes-validate --strict (an unknown or misspelt field is an error, and so is a kind the
#     schemas do not know);
#  2. a few cross-references the schemas cannot see: every namespaced resource is in namespace boxoffice, each
#     workload's selector matches its pod template, each Service, PodDisruptionBudget and NetworkPolicy selects a
#     workload, the autoscaler targets a Deployment that exists, and every ConfigMap a pod reads is defined.
#
# Usage: scripts/validate-manifests.sh [DIR]   (default deploy/kubernetes). Exits non-zero on any error.
# Installs kubernetes-validate (pinned; it ships the schemas, so validation needs no network) with pip when
# missing; a python3 that refuses pip installs (PEP 668) gets a virtualenv in target/ci-venv, as in .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-deploy/kubernetes}
validator_version=1.37.0
# The oldest Kubernetes these manifests support (1.28 brings the pod-index label the shard nodes take their id
# from; 1.30 is the oldest still maintained by most providers) and the newest the validator ships schemas for.
kubernetes_versions=(1.30.0 1.37.0)

has_validator() {
  "$1" -c "import sys, kubernetes_validate.version as v; sys.exit(v.__version__ != '$validator_version')" 2> /dev/null
}
python=python3
if ! has_validator "$python"; then
  if [ -x target/ci-venv/bin/python3 ] && has_validator target/ci-venv/bin/python3; then
    python=target/ci-venv/bin/python3
  elif ! python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$validator_version"; then
    [ -x target/ci-venv/bin/python3 ] || python3 -m venv target/ci-venv
    target/ci-venv/bin/python3 -m pip install --quiet --disable-pip-version-check \
      "kubernetes-validate==$validator_version"
    python=target/ci-venv/bin/python3
  fi
  has_validator "$python" || { echo "kubernetes-validate $validator_version could not be installed" >&2; exit 2; }
fi

mapfile -t files < <(find "$dir" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
[ ${#files[@]} -gt 0 ] || { echo "no manifests under $dir" >&2; exit 1; }

failed=0
version_args=()
for version in "${kubernetes_versions[@]}"; do version_args+=(-k "$version"); done
# kubernetes-validate exits 0 on a warning (a kind it has no schema for, e.g. a typo in kind or apiVersion):
# count those as failures too, and every file must hold at least one resource.
output=$("$python" -m kubernetes_validate --strict "${version_args[@]}" "${files[@]}" 2>&1) || failed=1
printf '%s\n' "$output"
if grep -qv '^INFO ' <<< "$output"; then failed=1; fi
for file in "${files[@]}"; do
  if ! grep -qF "INFO $file passed" <<< "$output"; then
    echo "ERROR $file: no resource validated"
    failed=1
  fi
done

# Cross-references.
"$python" - "${files[@]}" << 'EOF' || failed=1
import sys
import yaml

NAMESPACE = "boxoffice"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
# Created outside the manifests (deploy/kubernetes/make-secret.sh).
EXTERNAL_SECRETS = {"boxoffice-secrets"}

resources = []
for path in sys.argv[1:]:
    with open(path) as f:
        resources += [(path, r) for r in yaml.safe_load_all(f) if r]

errors = []
def error(path, resource, message):
    errors.append(f"ERROR {path} {resource['kind']}/{resource['metadata'].get('name')}: {message}")

def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

workloads = [(p, r) for p, r in resources if r["kind"] in WORKLOADS]
names = {(r["kind"], r["metadata"]["name"]) for _, r in resources}
for path, r in resources:
    meta = r["metadata"]
    if r["kind"] != "Namespace" and meta.get("namespace") != NAMESPACE:
        error(path, r, f"namespace must be {NAMESPACE}")
    if r["kind"] in WORKLOADS:
        template_labels = r["spec"]["template"]["metadata"].get("labels", {})
        if not selects(r["spec"]["selector"].get("matchLabels"), template_labels):
            error(path, r, "selector does not match the pod template's labels")
        pod = r["spec"]["template"]["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
            refs += [e["valueFrom"]["configMapKeyRef"]["name"] for e in container.get("env", [])
                     if "configMapKeyRef" in e.get("valueFrom", {})]
            for ref in refs:
                if ("ConfigMap", ref) not in names:
                    error(path, r, f"reads ConfigMap {ref}, which no manifest defines")
            secrets = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
            secrets += [e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                        if "secretKeyRef" in e.get("valueFrom", {})]
            for ref in secrets:
                if ("Secret", ref) not in names and ref not in EXTERNAL_SECRETS:
                    error(path, r, f"reads Secret {ref}, which nothing creates")
        if r["kind"] == "StatefulSet" and ("Service", r["spec"]["serviceName"]) not in names:
            error(path, r, f"serviceName {r['spec']['serviceName']} is not a Service here")
    selector = None
    if r["kind"] == "Service":
        selector = r["spec"].get("selector")
    elif r["kind"] == "PodDisruptionBudget":
        selector = r["spec"]["selector"].get("matchLabels")
    elif r["kind"] == "NetworkPolicy":
        selector = r["spec"]["podSelector"].get("matchLabels")
    if selector is not None and not any(
        selects(selector, w["spec"]["template"]["metadata"].get("labels", {})) for _, w in workloads
    ):
        error(path, r, "selects no workload's pods")
    if r["kind"] == "HorizontalPodAutoscaler":
        target = r["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) not in names:
            error(path, r, f"targets {target['kind']}/{target['name']}, which no manifest defines")

for line in errors:
    print(line)
print(f"cross-references: {len(resources)} resources, {len(errors)} errors")
sys.exit(1 if errors else 0)
EOF

if [ "$failed" -ne 0 ]; then
  echo "manifests under $dir: INVALID" >&2
  exit 1
fi
echo "manifests under $dir: ${#files[@]} files valid against Kubernetes ${kubernetes_versions[*]}"
