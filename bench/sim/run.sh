#!/usr/bin/env bash
# The simulator's scaling report (bench/README.md, "A thousand peers, simulated"): broadcast and
# group averaging at 8 to 1,000 peers on home links, core's real codec and rules on the synthetic
# objective. About 10 minutes on 2 cores; writes bench/sim/scaling.json and bench/sim/scaling.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
gs_env
cargo build --release --locked -p gradswarm-sim
"$CARGO_TARGET_DIR/release/swarm-sim" scale --peers 8,32,128,512,1000 \
  --report bench/sim/scaling.json --plot bench/sim/scaling.png "$@"
