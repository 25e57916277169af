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
# A second build whose stream checksum hashes nothing, for the "cost of the
# checksum" table; it lives in its own target directory.
cargo build --release --bins --features bench-skip-checksum --target-dir target/bench-skip-checksum
export BARGE_BENCH_SKIP_CHECKSUM_DIR="$PWD/target/bench-skip-checksum/release"
exec cargo bench --bench suite -- "$@"
