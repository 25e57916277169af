#!/usr/bin/env bash
# Run the whole benchmark suite and write BENCHMARKS.md at the top of the
# source tree. Peers (OpenSSH's sftp and sftp-server, rsync) are installed
# from Debian's packages when missing.
#
#   bench/run.sh            the full suite (about 10 minutes)
#   bench/run.sh --quick    small sizes, few runs; writes target/BENCHMARKS-quick.md
#   bench/run.sh --only file,launch --dir /some/scratch --out FILE
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench suite -- "$@"
