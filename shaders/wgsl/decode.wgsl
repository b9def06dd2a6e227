// Decode on the GPU: dequantize (int8) and scatter-add weight · D(c) into a dense accumulator,
// bit-identical to core's DecodedUpdate::add_to (one rounding for the product, one for the sum).
// Indices of one update are strictly increasing (the decoder checked), so no two threads collide.

struct DecodeParams {
    count: u32,
    block: u32,
    // bit 0: sparse (indices present); bit 1: int8 (else f32 bits)
    mode: u32,
    weight: u32,
}

@group(0) @binding(0) var<uniform> dp: DecodeParams;
@group(0) @binding(1) var<storage, read> d_indices: array<u32>;
@group(0) @binding(2) var<storage, read> d_vals: array<u32>;
@group(0) @binding(3) var<storage, read> d_exps: array<u32>;
@group(0) @binding(4) var<storage, read_write> acc: array<f32>;

@compute @workgroup_size(256)
fn scatter_add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let j = (wg.x + wg.y * nwg.x) * 256u + lid;
    if j >= dp.count {
        return;
    }
    let i = select(j, d_indices[j], (dp.mode & 1u) != 0u);
    var v = d_vals[j];
    if (dp.mode & 2u) != 0u {
        v = dequantize_bits(bitcast<i32>(v), d_exps[j / dp.block]);
    }
    let p = mul_exact(bitcast<f32>(dp.weight), bitcast<f32>(v));
    acc[i] = add_exact(acc[i], p);
}
