#!/bin/sh
# Install barge for C users:
#   PREFIX/include/barge.h
#   PREFIX/lib/libbarge.so.VERSION, libbarge.so.MAJOR (the SONAME), libbarge.so
#   PREFIX/lib/libbarge.a
#   PREFIX/lib/pkgconfig/barge.pc
#   PREFIX/libexec/barge/barge-helper  (the library finds it relative to
#                                       itself: no configuration needed)
#
# Usage: scripts/install.sh [--no-build] [--from DIR] [--destdir DIR] PREFIX
#   --no-build     do not run `cargo build --release`
#   --from DIR     take the built files from DIR (default target/release)
#   --destdir DIR  stage under DIR (for packaging); paths inside stay PREFIX
set -eu

cd "$(dirname "$0")/.."
build=1
from=target/release
destdir=
while [ $# -gt 1 ]; do
    case "$1" in
        --no-build) build=0; shift ;;
        --from) from=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ $# -eq 1 ] || { echo "usage: scripts/install.sh [--no-build] [--from DIR] [--destdir DIR] PREFIX" >&2; exit 2; }
prefix=$1
case "$prefix" in
    /*) ;;
    *) echo "install.sh: PREFIX must be absolute: $prefix" >&2; exit 2 ;;
esac

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
major=${version%%.*}
[ -n "$version" ] || { echo "install.sh: no version in Cargo.toml" >&2; exit 1; }

if [ "$build" = 1 ]; then
    cargo build --release --locked
fi
for f in libbarge.so libbarge.a barge-helper; do
    [ -f "$from/$f" ] || { echo "install.sh: $from/$f is missing; build first" >&2; exit 1; }
done

root=$destdir$prefix
install -d "$root/include" "$root/lib/pkgconfig" "$root/libexec/barge"
install -m 644 include/barge.h "$root/include/barge.h"
install -m 755 "$from/libbarge.so" "$root/lib/libbarge.so.$version"
ln -sf "libbarge.so.$version" "$root/lib/libbarge.so.$major"
ln -sf "libbarge.so.$major" "$root/lib/libbarge.so"
install -m 644 "$from/libbarge.a" "$root/lib/libbarge.a"
install -m 755 "$from/barge-helper" "$root/libexec/barge/barge-helper"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" barge.pc.in \
    > "$root/lib/pkgconfig/barge.pc"
chmod 644 "$root/lib/pkgconfig/barge.pc"
echo "installed barge $version under $root"
