#!/usr/bin/env bash
# Builds fully static `shoal` binaries (musl, linked with rust-lld) and the `shoal:latest`
# docker image the testbed fleet runs.
#
#   testbed/build.sh [x86_64|aarch64|all]     (default: x86_64)
#
# Static musl binaries need no libc in the image, so the image is `FROM scratch` plus the
# binary: there is no registry to pull a base image from, and nothing else is needed.
# Each target gets its own CARGO_TARGET_DIR (target/testbed-<arch>) so this never evicts
# the host debug build. The image is x86_64 only (the host's architecture); the aarch64
# binary is built and smoke-tested under qemu for copying onto real boards.
set -euo pipefail

ARCH=${1:-x86_64}
IMAGE=${SHOAL_IMAGE:-shoal:latest}
cd "$(dirname "$0")/.."
ROOT=$PWD

die() {
    echo "build.sh: $*" >&2
    exit 1
}

case "$ARCH" in
x86_64) ARCHES=(x86_64) ;;
aarch64) ARCHES=(aarch64) ;;
all) ARCHES=(x86_64 aarch64) ;;
*) die "unknown architecture '$ARCH' (want x86_64, aarch64 or all)" ;;
esac

ensure_target() {
    local target=$1
    if ! rustup target list --installed | grep -qx "$target"; then
        echo "build.sh: adding Rust target $target" >&2
        rustup target add "$target" || die "could not add the $target target (offline?)"
    fi
}

# ring (rustls' crypto) has C and assembly parts, so each target needs a C compiler. The
# C is freestanding apart from <stdint.h>-style headers, so glibc-targeting gcc produces
# objects that link fine into a static musl binary.
c_compiler() {
    local arch=$1
    if [ "$arch" = x86_64 ]; then
        command -v musl-gcc >/dev/null 2>&1 && { echo musl-gcc; return; }
        echo gcc
        return
    fi
    if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || die "aarch64-linux-gnu-gcc is missing; install gcc-aarch64-linux-gnu"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        echo "build.sh: installing gcc-aarch64-linux-gnu (for ring's C code)" >&2
        $sudo apt-get install -y gcc-aarch64-linux-gnu >/dev/null \
            || die "could not install gcc-aarch64-linux-gnu"
    fi
    echo aarch64-linux-gnu-gcc
}

ensure_qemu() {
    command -v qemu-aarch64-static >/dev/null 2>&1 && return
    command -v apt-get >/dev/null 2>&1 || die "qemu-aarch64-static is missing; install qemu-user-static"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "build.sh: installing qemu-user-static" >&2
    $sudo apt-get install -y qemu-user-static >/dev/null 2>&1 \
        || { $sudo apt-get update >/dev/null && $sudo apt-get install -y qemu-user-static >/dev/null; } \
        || die "could not install qemu-user-static"
}

# Builds one architecture, smoke-tests it and prints the stripped binary's path on stdout.
build_one() {
    local arch=$1
    local target="$arch-unknown-linux-musl"
    local var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_LINKER"
    local cc_var="CC_$(echo "$target" | tr '-' '_')"
    local target_dir="$ROOT/target/testbed-$arch"
    ensure_target "$target"
    local cc
    cc=$(c_compiler "$arch")
    local start end
    start=$(date +%s)
    # rust-lld links against musl's self-contained CRT and libc: no cross linker, fully static.
    env "$var=rust-lld" "$cc_var=$cc" cargo build --release --locked -p shoal --bin shoal \
        --target "$target" --target-dir "$target_dir" >&2
    end=$(date +%s)
    local bin="$target_dir/$target/release/shoal"
    [ -x "$bin" ] || die "no binary at $bin"
    echo "build.sh: $arch build took $((end - start)) s; binary $(stat -c %s "$bin") bytes ($(du -h "$bin" | cut -f1))" >&2
    if file "$bin" 2>/dev/null | grep -q 'dynamically linked'; then
        die "$bin is dynamically linked; it would not run in a scratch image"
    fi
    # Smoke test: the binary starts and parses its command line on the target ISA.
    if [ "$arch" = aarch64 ]; then
        ensure_qemu
        qemu-aarch64-static "$bin" --version >&2 || die "aarch64 binary failed under qemu"
    else
        "$bin" --version >&2 || die "x86_64 binary failed to run"
    fi
    # A copy without DWARF (line tables are ~5/6 of the file) to ship to boards and put in
    # the image; symbol names stay for backtraces, the full binary stays for debugging.
    # binutils' objcopy for x86_64; the aarch64 one comes with gcc-aarch64-linux-gnu.
    local stripped="$target_dir/shoal-$arch" objcopy=objcopy
    [ "$arch" = aarch64 ] && objcopy=aarch64-linux-gnu-objcopy
    "$objcopy" --strip-debug "$bin" "$stripped" || die "could not strip $bin with $objcopy"
    echo "build.sh: $arch stripped binary $stripped: $(stat -c %s "$stripped") bytes" >&2
    echo "$stripped"
}

build_image() {
    local bin=$1
    # A throwaway context holding only what the image needs, so docker does not tar up
    # the repo (and its multi-GB target/) as build context.
    local ctx
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' RETURN
    cp "$bin" "$ctx/shoal"
    cp "$ROOT/testbed/Dockerfile" "$ctx/Dockerfile"
    mkdir "$ctx/cache"
    local start end
    start=$(date +%s)
    # Quiet unless it fails (the legacy builder warns about BuildKit on every build).
    docker build -q -t "$IMAGE" "$ctx" >"$ctx/build.log" 2>&1 \
        || { cat "$ctx/build.log" >&2; die "docker build failed"; }
    end=$(date +%s)
    echo "build.sh: image $IMAGE built in $((end - start)) s, size $(docker image inspect -f '{{.Size}}' "$IMAGE") bytes" >&2
    docker run --rm "$IMAGE" --version >&2 || die "image $IMAGE does not run"
}

for arch in "${ARCHES[@]}"; do
    bin=$(build_one "$arch")
    if [ "$arch" = x86_64 ]; then
        build_image "$bin"
    fi
done
