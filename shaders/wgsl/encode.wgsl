// Encode with error feedback on the GPU: u = Δ + e; exact top-k threshold by a three-pass radix
// select on |u|'s bits (11 + 10 + 10 bits, histograms in workgroup memory); ordered compaction by
// prefix sums; int8 quantization with power-of-two block scales and counter-based stochastic
// rounding; e ← u − D(c). Every result is a pure function of the input, never of scheduling:
// atomics only count, and positions come from prefix sums in index order.

struct Params {
    n: u32,
    k: u32,
    block: u32,
    // bit 0: top-k (else every coordinate); bit 1: int8 (else f32)
    mode: u32,
    k0: u32,
    k1: u32,
    // largest accepted |u| bits (f32::MAX, or 127 · 2^120 for int8)
    limit: u32,
    n_tiles: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read_write> residual: array<f32>;
@group(0) @binding(3) var<storage, read_write> ubuf: array<f32>;
// [0, 2048): histogram; then the state words below; then per-tile counts and their prefix sums.
@group(0) @binding(4) var<storage, read_write> scratch: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> indices: array<u32>;
// the selected values' bits, then (int8) their quantized values as i32 bits
@group(0) @binding(6) var<storage, read_write> vals: array<u32>;
@group(0) @binding(7) var<storage, read_write> exps: array<u32>;

const WG: u32 = 256u;
const HIST_ITEMS: u32 = 16u;
const BINS: u32 = 2048u;
const BAD: u32 = 2048u;
const PREFIX: u32 = 2049u;
const K_REM: u32 = 2050u;
const THRESHOLD: u32 = 2051u;
const TIES: u32 = 2052u;
const TILES: u32 = 2064u;

var<workgroup> wh: array<atomic<u32>, 2048>;
var<workgroup> scan_a: array<u32, 256>;
var<workgroup> scan_b: array<u32, 256>;
var<workgroup> tile_a: atomic<u32>;
var<workgroup> tile_b: atomic<u32>;

fn group_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

fn top_k() -> bool {
    return (params.mode & 1u) != 0u;
}

fn int8() -> bool {
    return (params.mode & 2u) != 0u;
}

fn failed() -> bool {
    return atomicLoad(&scratch[BAD]) != 0xffffffffu;
}

fn clear_local_hist(lid: u32) {
    for (var b = lid; b < BINS; b += WG) {
        atomicStore(&wh[b], 0u);
    }
    workgroupBarrier();
}

fn flush_local_hist(lid: u32) {
    workgroupBarrier();
    for (var b = lid; b < BINS; b += WG) {
        let c = atomicLoad(&wh[b]);
        if c != 0u {
            atomicAdd(&scratch[b], c);
        }
    }
}

// u = Δ + e into ubuf; the first out-of-range index into BAD; histogram of |u|'s bits 20..30.
@compute @workgroup_size(256)
fn add_hist(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let base = group_index(wg, nwg) * WG * HIST_ITEMS;
    let hist = top_k();
    clear_local_hist(lid);
    for (var j = 0u; j < HIST_ITEMS; j++) {
        let i = base + j * WG + lid;
        if i < params.n {
            let u = add_exact(delta[i], residual[i]);
            ubuf[i] = u;
            let key = bitcast<u32>(u) & ABS;
            if key > params.limit {
                atomicMin(&scratch[BAD], i);
            } else if hist {
                atomicAdd(&wh[key >> 20u], 1u);
            }
        }
    }
    flush_local_hist(lid);
}

// Histogram of digit (key >> shift) & (2^width − 1) over keys whose bits above it equal PREFIX's.
fn hist_pass(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, shift: u32, width: u32) {
    let base = group_index(wg, nwg) * WG * HIST_ITEMS;
    let prefix = atomicLoad(&scratch[PREFIX]);
    let high = shift + width;
    clear_local_hist(lid);
    for (var j = 0u; j < HIST_ITEMS; j++) {
        let i = base + j * WG + lid;
        if i < params.n {
            let key = bitcast<u32>(ubuf[i]) & ABS;
            if key <= params.limit && (key >> high) == (prefix >> high) {
                atomicAdd(&wh[(key >> shift) & ((1u << width) - 1u)], 1u);
            }
        }
    }
    flush_local_hist(lid);
}

@compute @workgroup_size(256)
fn hist_1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    hist_pass(wg, nwg, lid, 10u, 10u);
}

@compute @workgroup_size(256)
fn hist_2(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    hist_pass(wg, nwg, lid, 0u, 10u);
}

// From the top bin down, find the digit holding the K_REM-th largest key; fix it in PREFIX and
// take the keys above it off K_REM. Zeroes the histogram for the next pass.
fn walk(shift: u32, width: u32) {
    let nb = 1u << width;
    let k_rem = atomicLoad(&scratch[K_REM]);
    var above = 0u;
    var digit = 0u;
    var found = false;
    for (var b = i32(nb) - 1; b >= 0; b--) {
        let c = atomicLoad(&scratch[u32(b)]);
        if !found {
            if above + c >= k_rem {
                digit = u32(b);
                found = true;
            } else {
                above += c;
            }
        }
        atomicStore(&scratch[u32(b)], 0u);
    }
    let prefix = atomicLoad(&scratch[PREFIX]) | (digit << shift);
    atomicStore(&scratch[PREFIX], prefix);
    atomicStore(&scratch[K_REM], k_rem - above);
    if shift == 0u {
        // The k-th largest key, and how many keys equal to it are taken (lowest indices first).
        atomicStore(&scratch[THRESHOLD], prefix);
        atomicStore(&scratch[TIES], k_rem - above);
    }
}

@compute @workgroup_size(1)
fn walk_0() {
    walk(20u, 11u);
}

@compute @workgroup_size(1)
fn walk_1() {
    walk(10u, 10u);
}

@compute @workgroup_size(1)
fn walk_2() {
    walk(0u, 10u);
}

// Per tile of 256 coordinates: how many keys are above the threshold, and how many equal it.
@compute @workgroup_size(256)
fn tile_count(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let tile = group_index(wg, nwg);
    if tile >= params.n_tiles {
        return;
    }
    if lid == 0u {
        atomicStore(&tile_a, 0u);
        atomicStore(&tile_b, 0u);
    }
    workgroupBarrier();
    let t = atomicLoad(&scratch[THRESHOLD]);
    let i = tile * WG + lid;
    if i < params.n {
        let key = bitcast<u32>(ubuf[i]) & ABS;
        if key > t {
            atomicAdd(&tile_a, 1u);
        } else if key == t {
            atomicAdd(&tile_b, 1u);
        }
    }
    workgroupBarrier();
    if lid == 0u {
        atomicStore(&scratch[TILES + 2u * tile], atomicLoad(&tile_a));
        atomicStore(&scratch[TILES + 2u * tile + 1u], atomicLoad(&tile_b));
    }
}

// Exclusive prefix sums of the tile counts, in tile order (one workgroup).
@compute @workgroup_size(256)
fn tile_scan(@builtin(local_invocation_index) lid: u32) {
    let nt = params.n_tiles;
    let chunk = (nt + WG - 1u) / WG;
    let first = min(lid * chunk, nt);
    let last = min(first + chunk, nt);
    var a = 0u;
    var b = 0u;
    for (var t = first; t < last; t++) {
        a += atomicLoad(&scratch[TILES + 2u * t]);
        b += atomicLoad(&scratch[TILES + 2u * t + 1u]);
    }
    scan_a[lid] = a;
    scan_b[lid] = b;
    workgroupBarrier();
    if lid == 0u {
        var sa = 0u;
        var sb = 0u;
        for (var j = 0u; j < WG; j++) {
            let ca = scan_a[j];
            let cb = scan_b[j];
            scan_a[j] = sa;
            scan_b[j] = sb;
            sa += ca;
            sb += cb;
        }
    }
    workgroupBarrier();
    var pa = scan_a[lid];
    var pb = scan_b[lid];
    let out = TILES + 2u * nt;
    for (var t = first; t < last; t++) {
        atomicStore(&scratch[out + 2u * t], pa);
        atomicStore(&scratch[out + 2u * t + 1u], pb);
        pa += atomicLoad(&scratch[TILES + 2u * t]);
        pb += atomicLoad(&scratch[TILES + 2u * t + 1u]);
    }
}

// Writes the selected coordinates in index order: a coordinate above the threshold goes to
// (keys above it before it) + min(ties before it, ties taken); a tie is taken while fewer than
// TIES ties precede it.
@compute @workgroup_size(256)
fn compact(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let tile = group_index(wg, nwg);
    if tile >= params.n_tiles {
        return;
    }
    let t = atomicLoad(&scratch[THRESHOLD]);
    let ties = atomicLoad(&scratch[TIES]);
    let i = tile * WG + lid;
    var strict = 0u;
    var tie = 0u;
    var u = 0.0;
    if i < params.n {
        u = ubuf[i];
        let key = bitcast<u32>(u) & ABS;
        strict = select(0u, 1u, key > t);
        tie = select(0u, 1u, key == t);
    }
    // Inclusive scans (Hillis–Steele) of both flags over the tile.
    scan_a[lid] = strict;
    scan_b[lid] = tie;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
        var a = scan_a[lid];
        var b = scan_b[lid];
        if lid >= off {
            a += scan_a[lid - off];
            b += scan_b[lid - off];
        }
        workgroupBarrier();
        scan_a[lid] = a;
        scan_b[lid] = b;
        workgroupBarrier();
    }
    let out = TILES + 2u * params.n_tiles;
    let strict_before = atomicLoad(&scratch[out + 2u * tile]) + scan_a[lid] - strict;
    let ties_before = atomicLoad(&scratch[out + 2u * tile + 1u]) + scan_b[lid] - tie;
    let taken = strict == 1u || (tie == 1u && ties_before < ties);
    if taken {
        let pos = strict_before + min(ties_before, ties);
        indices[pos] = i;
        vals[pos] = bitcast<u32>(u);
    }
}

// One thread per block of sent values: the block's exponent byte, then each value's int8.
@compute @workgroup_size(256)
fn quantize_blocks(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let blk = group_index(wg, nwg) * WG + lid;
    let first = blk * params.block;
    if first >= params.k || failed() {
        return;
    }
    let last = min(first + params.block, params.k);
    var max_bits = 0u;
    for (var j = first; j < last; j++) {
        max_bits = max(max_bits, vals[j] & ABS);
    }
    let e = block_exponent_byte(max_bits);
    exps[blk] = e;
    for (var j = first; j < last; j++) {
        let i = select(j, indices[j], top_k());
        vals[j] = bitcast<u32>(quantize(vals[j], e, draw(i, params.k0, params.k1)));
    }
}

// e ← u everywhere (only if every u was in range, so that a bad Δ leaves e untouched).
@compute @workgroup_size(256)
fn commit(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wg, nwg) * WG + lid;
    if i < params.n && !failed() {
        residual[i] = ubuf[i];
    }
}

// e ← u − D(c) at the sent coordinates (f32: exactly 0).
@compute @workgroup_size(256)
fn feedback(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let j = group_index(wg, nwg) * WG + lid;
    if j >= params.k || failed() {
        return;
    }
    let i = select(j, indices[j], top_k());
    if int8() {
        let d = dequantize_bits(bitcast<i32>(vals[j]), exps[j / params.block]);
        residual[i] = add_exact(ubuf[i], bitcast<f32>(d ^ SIGN));
    } else {
        residual[i] = 0.0;
    }
}
