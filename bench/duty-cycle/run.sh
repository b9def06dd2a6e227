#!/usr/bin/env bash
# The duty-cycle benchmark (issue 28): the same three-peer run twice in one go, all peers at full
# duty (full.toml) and peer 2 at --duty-cycle 0.5 (half.toml). Writes bench/duty-cycle/result.json:
# peer 2's share of wall time spent computing, and the other peers' round pace against the
# full-duty run (wall time to the same round; > 1 would mean the throttled peer held them back).
#   bench/duty-cycle/run.sh        (~3 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
gs_env
harness="${GS_HARNESS:-$CARGO_TARGET_DIR/release/swarm-harness}"
[ -x "$harness" ] || cargo build --release --locked -p gradswarm-harness
for run in full half; do
  "$harness" run --scenario "bench/duty-cycle/$run.toml" --report "bench/duty-cycle/$run.json"
done
python3 - <<'PY'
import json
def load(name):
    return json.load(open(f"bench/duty-cycle/{name}.json"))
full, half = load("full"), load("half")
def share(report, index):
    peer = next(p for p in report["peers"] if p["index"] == index)
    return sum(r["compute_s"] for r in peer["rounds"]) / report["summary"]["wall_s"]
result = {
    "throttled_compute_share": share(half, 2),
    "throttled_compute_share_at_full_duty": share(full, 2),
    "others_wall_s_ratio_vs_full": half["summary"]["wall_s"] / full["summary"]["wall_s"],
    "wall_s": {"full": full["summary"]["wall_s"], "half": half["summary"]["wall_s"]},
}
json.dump(result, open("bench/duty-cycle/result.json", "w"), indent=2)
print(json.dumps(result))
PY
