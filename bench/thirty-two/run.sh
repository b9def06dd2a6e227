#!/usr/bin/env bash
# 32 real peers of a small model on loopback in groups of 4, against four peers and against
# broadcast at 32 (issue 29's second point): per-peer wire bytes per step of the groups over the
# four peers' (goal ≤ 1.3×), and samples to the target of the groups over broadcast's (goal
# ≤ 1.2×), regrouping every 20 rounds and every 40. Writes
# bench/thirty-two/{four,four-paced,groups,groups-40,broadcast}.json and .png, and result.json.
# groups-80 and groups-never (regrouped every 80 rounds, and not once) price mixing: run them by
# name (~8 min each).
#   bench/thirty-two/run.sh                 (those five; ~20 min on 2 cores)
#   bench/thirty-two/run.sh four groups     (some of them; result.json from what is there)
#   bench/thirty-two/run.sh --summary       (none: result.json from the reports there)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
gs_env
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(four four-paced groups groups-40 broadcast)
[ "${runs[0]}" != --summary ] || runs=()
gs_bench_runs bench/thirty-two "${runs[@]+"${runs[@]}"}"
python3 - <<'PY'
import json, os
d = "bench/thirty-two"
runs = {n: json.load(open(f"{d}/{n}.json")) for n in ["four", "four-paced", "groups", "groups-40", "groups-80", "groups-never", "broadcast"] if os.path.exists(f"{d}/{n}.json")}
result = {}
for name, r in runs.items():
    s = r["summary"]
    if not s.get("steady_wire_bytes_per_peer_per_step"):
        # Reports from before the harness summed it: the same rule from their rows.
        rounds, h = s["rounds"], s["local_steps"]
        rates = []
        for p in r["peers"]:
            rows = [row for row in p["rounds"] if rounds // 10 <= row["round"] < rounds - 1]
            if rows:
                rates.append(sum(row["wire_bytes_up"] for row in rows) / (len(rows) * h))
        s["steady_wire_bytes_per_peer_per_step"] = sum(rates) / len(rates)
    # The evaluations come every 5 rounds, 20 % of the 25 the target takes: the samples where
    # the swarm's mean validation loss crosses the target, linear between the two evaluations
    # around it, tell runs apart that the grid puts on the same or on neighbouring points.
    peers = [p for p in r["peers"] if not p.get("attack")]
    by_round = {}
    for p in peers:
        for row in p["rounds"]:
            if row.get("val_loss") is not None:
                by_round.setdefault(row["round"], []).append(row["val_loss"])
    curve = []
    for rnd in sorted(by_round):
        samples = sum(next((row["samples"] for row in reversed(p["rounds"]) if row["round"] <= rnd), 0) for p in peers)
        curve.append((samples, sum(by_round[rnd]) / len(by_round[rnd])))
    target, crossing = s["target_val_loss"], None
    for (s0, l0), (s1, l1) in zip(curve, curve[1:]):
        if l0 > target >= l1:
            crossing = s0 + (l0 - target) / (l0 - l1) * (s1 - s0)
            break
    s["samples_to_target_interpolated"] = crossing
    result[name] = {k: s.get(k) for k in ["peers", "wire_bytes_per_peer_per_step", "wire_bytes_per_peer_per_step_by_protocol", "steady_wire_bytes_per_peer_per_step", "update_bytes_per_peer_per_step",
                                      "samples_to_target", "samples_to_target_interpolated", "rounds_to_target", "final_val_loss",
                                      "max_replica_divergence", "comm_fraction", "connections_per_peer", "wall_s", "drops"]}
for run in ["groups", "groups-40", "groups-80", "groups-never"]:
    g = result.get(run, {})
    for base in ["four", "four-paced", "broadcast"]:
        if g and base in result:
            result[f"{run}_bytes_vs_{base}"] = g["wire_bytes_per_peer_per_step"] / result[base]["wire_bytes_per_peer_per_step"]
            if result[base].get("steady_wire_bytes_per_peer_per_step"):
                result[f"{run}_steady_bytes_vs_{base}"] = g["steady_wire_bytes_per_peer_per_step"] / result[base]["steady_wire_bytes_per_peer_per_step"]
    if g and "broadcast" in result:
        a, b = g["samples_to_target"], result["broadcast"]["samples_to_target"]
        result[f"{run}_samples_vs_broadcast"] = a / b if a and b else None
        a, b = g["samples_to_target_interpolated"], result["broadcast"]["samples_to_target_interpolated"]
        result[f"{run}_samples_interpolated_vs_broadcast"] = a / b if a and b else None
json.dump(result, open(f"{d}/result.json", "w"), indent=2)
print(json.dumps(result, indent=2))
PY
