#!/bin/bash
# bench/cuda/make_vendor.sh - build vendor-deb/vendor.tar.xz: the Debian packages the GPU
# machine's build needs (headers, pkg-config files, shared libraries) unpacked with dpkg -x and
# repacked as usr/..., because that machine cannot download. Run on a Debian 12 machine with
# the project's apt sources, from the repository root.
set -euo pipefail
PKGS=(check libsubunit-dev libsubunit0 libsqlite3-dev libsqlite3-0 libpcre2-dev libpcre2-8-0
      libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libgfortran5 libjansson-dev libjansson4
      libopenblas-dev libopenblas0-pthread libopenblas-pthread-dev libmicrohttpd-dev
      libmicrohttpd12 libuv1-dev libuv1 nettle-dev libnettle8)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "${PKGS[@]}" >/dev/null 2>&1)
mkdir -p "$work/root"
for d in "$work"/*.deb; do dpkg -x "$d" "$work/root"; done
rm -rf "$work/root/usr/share"
# shared libraries only, but for Check, which Debian ships static
find "$work/root" -name '*.a' ! -name 'libcheck*.a' -delete
mkdir -p vendor-deb
tar -C "$work/root" -cJf vendor-deb/vendor.tar.xz usr
echo "vendor-deb/vendor.tar.xz: $(tar tJf vendor-deb/vendor.tar.xz | wc -l) entries"
