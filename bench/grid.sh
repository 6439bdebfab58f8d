#!/usr/bin/env bash
# Grid manager: reconcile of 100 apps over 1,000 simulated nodes (each node
# in one of 10 label groups, each app linked to one group: 10,000 app
# instances). Prints markdown rows: | benchmark | g8 | baseline | ratio | target |
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
go run ./tools/gridbench -apps 100 -nodes 1000 -groups 10 -store
