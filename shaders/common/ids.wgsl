// Built-in ids every kernel takes as one struct, so the subgroup variants add their two
// builtins in one place. Workgroups are 1-D (WG invocations); grids may be 2-D when a
// dimension would pass the 65535 limit, so the linear workgroup id is wg.x + wg.y * nwg.x.
struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
}

fn group_id(ids: Ids) -> u32 {
    return ids.wg.x + ids.wg.y * ids.nwg.x;
}
