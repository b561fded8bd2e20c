// Per-invocation built-ins every kernel takes as one struct, so the subgroup variants add
// their two builtins in one place. Workgroups are 1-D (WG invocations).
//
// The workgroup id and count are NOT in this struct: Tint's uniformity analysis treats a
// struct parameter as non-uniform as soon as one member is (local_invocation_index), and a
// row index derived from it could then not guard code that reaches a barrier. Entry points
// take them as separate parameters and call group_id(wg, nwg).
struct Ids {
    @builtin(local_invocation_index) lid: u32,
#ifdef SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
}

// Grids may be 2-D when a dimension would pass the 65535 limit: the linear workgroup id.
fn group_id(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}
