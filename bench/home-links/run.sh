#!/usr/bin/env bash
# Eight peers of the default model on loopback and behind home links (10 Mbit/s up, 50 down,
# 60 ms RTT, modelled on each peer's TCP connections): what a home connection costs in round time,
# at what compression, by broadcast and in groups of 4 (groups.toml; groups-loopback.toml without
# the links). Writes bench/home-links/{loopback,home,groups,groups-loopback}.json and .png, and
# result.json.
#   bench/home-links/run.sh                 (all four; ~22 min on 2 cores)
#   bench/home-links/run.sh groups          (some of them; result.json from what is there)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
gs_env
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(loopback home groups groups-loopback)
gs_bench_runs bench/home-links "${runs[@]+"${runs[@]}"}"
python3 - <<'PY'
import json
result = {}
import os
for name in ["loopback", "home", "groups", "groups-loopback"]:
    if not os.path.exists(f"bench/home-links/{name}.json"):
        continue
    r = json.load(open(f"bench/home-links/{name}.json"))
    s = r["summary"]
    rows = [row for p in r["peers"] for row in p["rounds"]]
    mean = lambda k: sum(row[k] for row in rows) / max(1, len(rows))
    # How much longer the slowest peer computed than the peers' mean, per round (rounds that
    # all peers reported): what a round that waits for its partners waits for at least.
    by_round = {}
    for row in rows:
        by_round.setdefault(row["round"], []).append(row["compute_s"])
    spreads = [max(c) - sum(c) / len(c) for c in by_round.values() if len(c) == s["peers"]]
    result[name] = {
        "comm_fraction": s["comm_fraction"],
        # comm_fraction without the wait for partners still computing (RoundRow::link_s).
        "link_fraction": s.get("link_fraction"),
        "bytes_ratio_vs_dense": s["bytes_ratio_vs_dense"],
        "wire_bytes_per_peer_per_step": s["wire_bytes_per_peer_per_step"],
        "compute_s_per_round": mean("compute_s"),
        "encode_s_per_round": mean("encode_s"),
        "network_s_per_round": mean("network_s"),
        "average_s_per_round": sum(row.get("average_s", 0.0) for row in rows) / max(1, len(rows)),
        "average_fetch_s_per_round": sum(row.get("average_fetch_s", 0.0) for row in rows) / max(1, len(rows)),
        # null for runs made before the harness measured it.
        "link_s_per_round": (sum(row["link_s"] if row["link_s"] is not None else row["network_s"] for row in rows) / max(1, len(rows))) if rows and "link_s" in rows[0] else None,
        "compute_spread_s_per_round": sum(spreads) / max(1, len(spreads)),
        "wall_s": s["wall_s"],
        "final_val_loss": s["final_val_loss"],
        "max_replica_divergence": s["max_replica_divergence"],
    }
json.dump(result, open("bench/home-links/result.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PY
