#!/usr/bin/env bash
# Pairwise gossip against broadcast at eight real peers (issue 29's second strategy): wire bytes
# per peer per step by protocol, and samples to the target. Writes
# bench/pairwise/{pairwise,broadcast}.json and .png, and result.json.
#   bench/pairwise/run.sh              (both; ~2 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
gs_env
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(pairwise broadcast)
gs_bench_runs bench/pairwise "${runs[@]+"${runs[@]}"}"
python3 - <<'PY'
import json, os
d = "bench/pairwise"
keys = ["peers", "wire_bytes_per_peer_per_step", "wire_bytes_per_peer_per_step_by_protocol",
        "steady_wire_bytes_per_peer_per_step", "samples_to_target", "rounds_to_target",
        "final_val_loss", "max_replica_divergence", "wall_s"]
result = {n: {k: json.load(open(f"{d}/{n}.json"))["summary"].get(k) for k in keys}
          for n in ["pairwise", "broadcast"] if os.path.exists(f"{d}/{n}.json")}
if len(result) == 2:
    p, b = result["pairwise"], result["broadcast"]
    result["pairwise_bytes_vs_broadcast"] = p["wire_bytes_per_peer_per_step"] / b["wire_bytes_per_peer_per_step"]
    a, c = p["samples_to_target"], b["samples_to_target"]
    result["pairwise_samples_vs_broadcast"] = a / c if a and c else None
json.dump(result, open(f"{d}/result.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PY
