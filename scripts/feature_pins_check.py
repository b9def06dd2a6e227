#!/usr/bin/env python3
"""Checks that `cargo test -p <member>` builds every third-party crate as `cargo test --workspace` does.

Cargo resolves features for the packages it is asked to build, so a member tested alone may build a
shared crate with fewer features than the whole workspace does: another build of that crate and of
everything above it (burn, wgpu, libp2p: minutes). feature-pins/Cargo.toml asks for the workspace's
features on x86_64 Linux; this script shows what is still missing there. Run it through
scripts/feature-pins-check.

It compiles nothing: it compares cargo's unit graphs (`cargo test --no-run --unit-graph`, an unstable
flag, read with RUSTC_BOOTSTRAP=1; it neither builds nor locks the target directory). A unit of
`cargo test -p X` is reused when the workspace's graph holds one with the same package, target, mode,
profile, features and platform and, recursively, the same dependencies. Both graphs are made with
`--target <host>` so that the copies built for build scripts and proc-macros ("(host)") are compared
apart from the others: conservative (a plain build may share a host and a target unit that happen to
match) but it never hides a difference.

Per member it prints the crates built with other features (what `-p` lacks, or has on top, against
the workspace's build of that crate; `(host)`: the copy built for build scripts and proc-macros;
`(build script)`, `(build script run)`: its build script, which sees the crate's features), then the
crates rebuilt only because a dependency differs. The fix for a listed crate: an entry in
feature-pins/Cargo.toml with the workspace's features (`-v` prints them; host crates go under
[build-dependencies]). gradswarm-feature-pins itself is left out (no code, never tested alone) unless
named.

Exit status: 0 when no member differs, 1 when one does, 2 when cargo fails (an out-of-date Cargo.lock:
the graphs are made with --locked). The pins are for x86_64 Linux: on other hosts differences are
expected.
Usage: feature_pins_check.py [-v] [member ...]   (default: every member)
"""
import argparse, hashlib, json, os, subprocess, sys

PINS = "gradswarm-feature-pins"

ap = argparse.ArgumentParser(
    description="Which crates `cargo test -p <member>` builds with other features than `cargo test --workspace`.")
ap.add_argument("-v", "--verbose", action="store_true", help="print both feature sets of each differing crate")
ap.add_argument("members", nargs="*", help="workspace members to check (default: all but " + PINS + ")")
args = ap.parse_args()

env = dict(os.environ, RUSTC_BOOTSTRAP="1")


def cargo(*a):
    r = subprocess.run(["cargo", *a], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.stderr.write(f"feature-pins-check: `cargo {' '.join(a)}` failed:\n{r.stderr}")
        sys.exit(2)
    return r.stdout


host = next(l.split()[1] for l in subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout.splitlines()
            if l.startswith("host:"))
if host != "x86_64-unknown-linux-gnu":
    print(f"note: the pins are for x86_64 Linux; on {host} differences are expected", file=sys.stderr)

meta = json.loads(cargo("metadata", "--format-version", "1", "--no-deps", "--locked"))
all_members = [p["name"] for p in meta["packages"]]
members = args.members or [m for m in all_members if m != PINS]
unknown = [m for m in members if m not in all_members]
if unknown:
    sys.stderr.write(f"feature-pins-check: not workspace members: {', '.join(unknown)}\n")
    sys.exit(2)


def crate(pkg_id):
    # registry+https://...#name@1.2.3, path+file:///dir#name@0.1.0 or path+file:///dir/name#0.1.0
    base, frag = pkg_id.rsplit("#", 1)
    if "@" in frag:
        name, version = frag.split("@", 1)
    else:
        name, version = base.rstrip("/").rsplit("/", 1)[1], frag
    return f"{name} v{version}"


def unit_graph(*selection):
    graph = json.loads(cargo("test", *selection, "--locked", "--target", host, "--no-run", "-Zunstable-options", "--unit-graph"))
    units, memo = graph["units"], {}

    def own(u):  # the unit itself, dependencies left out
        t = u["target"]
        return json.dumps([u["pkg_id"], t["name"], t["kind"], t["crate_types"], u["profile"], u["platform"], u["mode"], u["features"]],
                          sort_keys=True)

    def whole(i):  # the unit and, recursively, its dependencies
        if i not in memo:
            memo[i] = None
            u = units[i]
            deps = sorted(whole(d["index"]) + d["extern_crate_name"] for d in u["dependencies"])
            memo[i] = hashlib.sha1((own(u) + "|".join(deps)).encode()).hexdigest()
        return memo[i]

    out = []
    for i, u in enumerate(units):
        if u["mode"] == "doctest":
            continue
        kind = u["target"]["kind"][0]
        host_copy = u["platform"] is None and (kind, u["mode"]) != ("custom-build", "build")  # build scripts are all built for the host
        out.append(dict(name=crate(u["pkg_id"]) + (" (host)" if host_copy else ""), own=own(u), whole=whole(i),
                        features=u["features"], mode=u["mode"], kind=kind, ours=u["pkg_id"].startswith("path+")))
    return out


ws = unit_graph("--workspace")
ws_own = {u["own"] for u in ws}
ws_whole = {u["whole"] for u in ws}
ws_features = {}
for u in ws:
    ws_features.setdefault((u["name"], u["mode"], u["kind"]), []).append(u["features"])

failed = 0
for m in members:
    mu = unit_graph("-p", m)
    differ = {}
    for u in mu:
        if u["own"] not in ws_own:
            differ.setdefault((u["name"], u["mode"], u["kind"]), []).append(u["features"])
    rebuilt = sorted({u["name"] for u in mu if u["own"] in ws_own and u["whole"] not in ws_whole and not u["ours"]})
    rebuilt_ours = sorted({u["name"].split()[0] for u in mu if u["own"] in ws_own and u["whole"] not in ws_whole and u["ours"]})
    crates = sorted({name for name, _, _ in differ})
    if crates or rebuilt or rebuilt_ours:
        failed += 1
    print(f"== {m}: {len(crates)} crate(s) with other features, {len(rebuilt)} more rebuilt because of them")
    for (name, mode, kind), sets in sorted(differ.items(), key=lambda d: (d[0][0].split(" (")[0], d[0])):
        tag = {("build", "custom-build"): " (build script)", ("run-custom-build", "custom-build"): " (build script run)"}.get(
            (mode, kind), "" if mode == "build" and kind in ("lib", "proc-macro") else f" ({kind}, {mode})")
        theirs = ws_features.get((name, mode, kind))
        for f in sets:
            if not theirs:
                print(f"   {name}{tag}: not built by the workspace")
                continue
            near = min(theirs, key=lambda w: len(set(w) ^ set(f)))
            lacks, extra = sorted(set(near) - set(f)), sorted(set(f) - set(near))
            print(f"   {name}{tag}:" + (f" lacks [{', '.join(lacks)}]" if lacks else "") + (f" has on top [{', '.join(extra)}]" if extra else ""))
            if args.verbose:
                print(f"      -p {m}: [{', '.join(f)}]")
                print("      workspace: " + " / ".join(f"[{', '.join(w)}]" for w in theirs))
    if rebuilt:
        print("   rebuilt (a dependency differs): " + ", ".join(rebuilt))
    if rebuilt_ours:
        print("   our crates rebuilt: " + ", ".join(rebuilt_ours))

print(f"{failed} of {len(members)} member(s) build something other than `cargo test --workspace`"
      + ("" if not failed else "; see feature-pins/Cargo.toml"))
sys.exit(1 if failed else 0)
