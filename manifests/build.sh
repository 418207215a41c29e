#!/usr/bin/env bash
# Renders, signs and shows how to run one enclave instance (Gramine 1.8+ on an SGX machine).
#
#   manifests/build.sh ROLE INSTANCE [render.py options] [-- runtime arguments]
#
#   manifests/build.sh ps ps -- --listen 0.0.0.0:7000 --steps 1000 --workers 2 --checkpoint-dir /checkpoints
#   manifests/build.sh worker worker-0 -- --ps 10.0.0.1:7000 --worker-id 0 --synthetic 100000
#
# ROLE is ps, worker or chief; the runtime arguments are fixed in the manifest. render.py options: --debug,
# --peer-mrsigner, --min-peer-svn, --enclave-size, ... (python3 manifests/render.py defines --help).
# Environment: SGX_SIGNING_KEY (default ~/.config/gramine/enclave-key.pem; peers are pinned to its MRSIGNER),
# OUT_DIR (default build/sgx), PYTHON (the interpreter that runs in the enclave; default python3).
# Writes OUT_DIR/INSTANCE.manifest, .manifest.sgx and .sig; run with `gramine-sgx OUT_DIR/INSTANCE` from the
# repository root.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
role=$1
instance=$2
shift 2

repo=$(cd "$(dirname "$0")/.." && pwd)
# Trusted files and mounts of the application are relative to the repository: render, sign and run from it.
cd "$repo"
key=${SGX_SIGNING_KEY:-$HOME/.config/gramine/enclave-key.pem}
out=${OUT_DIR:-build/sgx}
python=${PYTHON:-python3}

for tool in gramine-manifest gramine-sgx-sign; do
  if ! command -v "$tool" >/dev/null; then
    echo "build.sh: $tool not found: install Gramine 1.8 or later (manifests/README.md)" >&2
    exit 1
  fi
done
if [ ! -r "$key" ]; then
  echo "build.sh: no signing key at $key: create one with gramine-sgx-gen-private-key or set SGX_SIGNING_KEY" >&2
  exit 1
fi

# The template variables, checked by render.py. PYTHONPATH is dropped so that python.get_sys_path() sees the
# interpreter's own path only.
defines_text=$(env -u PYTHONPATH "$python" manifests/render.py defines "$role" --instance "$instance" \
  --state-root "$out" --signing-key "$key" "$@")
mapfile -t defines <<< "$defines_text"

# Host directories behind the role's mounts (encrypted checkpoints or data, plaintext output).
for define in "${defines[@]}"; do
  case "$role:$define" in
    *:-Doutput_dir=*|ps:-Dcheckpoint_dir=*|worker:-Ddata_dir=*|chief:-Ddata_dir=*) mkdir -p "${define#*=}" ;;
  esac
done

mkdir -p "$out"
# gramine-manifest has no template loader: the shared macros are prepended to the role's template.
cat manifests/common.manifest.jinja "manifests/$role.manifest.template" \
  | env -u PYTHONPATH gramine-manifest "${defines[@]}" - "$out/$instance.manifest"
gramine-sgx-sign --key "$key" --manifest "$out/$instance.manifest" --output "$out/$instance.manifest.sgx"
if command -v gramine-sgx-sigstruct-view >/dev/null; then
  gramine-sgx-sigstruct-view "$out/$instance.sig"
fi

for define in "${defines[@]}"; do
  if [ "$define" = -Dbuild_mode=debug ]; then
    echo "WARNING: DEBUG enclave: the host can read its memory; never give it real data." >&2
  fi
done
echo "Signed $out/$instance.manifest.sgx. Run it from $repo with:"
echo "  gramine-sgx $out/$instance"
