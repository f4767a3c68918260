#!/usr/bin/env bash
# `make image`: build the serving and flow-runner images from docker/*.Dockerfile with buildah.
#
#   docker/build-images.sh [serving|flow-runner]...     (both when none is named)
#
# The Dockerfiles are the ones `docker build` takes in production; only their BASE differs.
# Environment:
#   MLOPS_IMAGE_BASE   the base image (Debian bookworm with Python 3.11 and venv). Default: a
#                      local one, localhost/intelli-rate-base:bookworm, made once from Debian's
#                      packages with debootstrap when it is not in buildah's storage yet.
#   MLOPS_IMAGE_TAG    the tag of both images (default: `git describe --always --dirty`); each
#                      is also tagged `latest`.
#   MLOPS_IMAGE_NO_CACHE=1  build every layer again (a cold build; `make bench-image` times it).
#   MLOPS_IMAGE_CA     a CA bundle directory mounted read-only over /etc/ssl/certs in the RUN
#                      steps that download (default /etc/ssl/certs: this machine's proxy CA).
# Prints one line per image on stdout: name, tag, size in bytes, seconds taken; the build's own
# output (a failed check's report among it) goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

base="${MLOPS_IMAGE_BASE:-localhost/intelli-rate-base:bookworm}"
tag="${MLOPS_IMAGE_TAG:-$(git describe --always --dirty 2>/dev/null || echo dev)}"
ca="${MLOPS_IMAGE_CA:-/etc/ssl/certs}"
images=("$@")
((${#images[@]})) || images=(serving flow-runner)

for tool in buildah podman debootstrap; do
    command -v "$tool" >/dev/null || {
        echo "build-images: $tool is missing (apt-get install buildah podman debootstrap)" >&2
        exit 69
    }
done

# A local base from Debian's packages: Python 3.11 (bookworm's), venv, CA certificates. The
# package caches go before the import (45 MB of .deb files and the apt lists).
if [[ "$base" == localhost/intelli-rate-base:* ]] && ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    echo "build-images: making $base with debootstrap" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root/rootfs" http://deb.debian.org/debian >"$root/debootstrap.log" 2>&1 \
        || { tail -20 "$root/debootstrap.log" >&2; exit 1; }
    rm -rf "$root/rootfs/var/cache/apt/archives/"*.deb "$root/rootfs/var/lib/apt/lists/"*
    tar -C "$root/rootfs" -c . | podman import --quiet - "$base" >/dev/null
fi

for image in "${images[@]}"; do
    dockerfile="docker/${image}.Dockerfile"
    [[ -f "$dockerfile" ]] || { echo "build-images: no $dockerfile" >&2; exit 64; }
    name="localhost/intelli-rate-${image}"
    start=$(date +%s.%N)
    cache=(--layers)
    # --layers with --no-cache: every step runs again, and its layer is kept for the next build.
    [[ "${MLOPS_IMAGE_NO_CACHE:-}" == 1 ]] && cache=(--no-cache --layers)
    buildah bud --quiet --isolation chroot "${cache[@]}" \
        --build-arg "BASE=${base}" \
        --volume "${ca}:/etc/ssl/certs:ro" \
        -f "$dockerfile" -t "${name}:${tag}" -t "${name}:latest" . >&2
    end=$(date +%s.%N)
    size=$(buildah inspect --type image --format '{{.ImageSize}}' "${name}:${tag}" 2>/dev/null \
        || podman image inspect --format '{{.Size}}' "${name}:${tag}")
    awk -v n="$name" -v t="$tag" -v s="$size" -v a="$start" -v b="$end" 'BEGIN { printf "%s %s %s %.1f\n", n, t, s, b - a }'
done
