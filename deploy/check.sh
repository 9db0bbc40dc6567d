#!/usr/bin/env bash
# Validates the deployment files offline: compose.yaml against the Compose specification's
# schema, the Kubernetes manifests against Kubernetes 1.30's schemas (strict: unknown fields
# are errors). Needs check-jsonschema and kubernetes-validate (tests/e2e/requirements.txt).
#
#   bash deploy/check.sh [python-venv-bin-dir]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bin=${1:-../.venv/bin}
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml
"$bin/kubernetes-validate" --strict --quiet -k 1.30.0 \
  kubernetes/namespace.yaml kubernetes/secret.yaml kubernetes/configmap.yaml \
  kubernetes/switchyard.yaml kubernetes/redis.yaml kubernetes/ollama.yaml
echo "deployment files valid"
