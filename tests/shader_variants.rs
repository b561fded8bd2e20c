//! Every WGSL variant any op can dispatch, validated by naga (the native compiler) and
//! compiled into a pipeline on this device; the browser test does the same with Tint.

mod common;

use pupil::gpu::shader::{render, Dialect};
use pupil::ops::all_variants;

#[test]
fn every_variant_validates_with_naga() {
    let variants = all_variants();
    let mut unique = variants.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), variants.len(), "a variant is listed twice");
    assert!(variants.iter().any(|k| k.needs_f16()) && variants.iter().any(|k| k.needs_subgroups()));
    let mut failures = Vec::new();
    for key in &variants {
        let source = render(key, Dialect::Naga).unwrap();
        let module = match naga::front::wgsl::parse_str(&source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{key}: parse: {}", e.emit_to_string(&source)));
                continue;
            }
        };
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
        validator
            .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
            .subgroup_operations(naga::valid::SubgroupOperationSet::all());
        if let Err(e) = validator.validate(&module) {
            failures.push(format!("{key}: validate: {}", e.emit_to_string(&source)));
        }
        assert!(module.entry_points.iter().any(|ep| ep.name == key.entry), "{key}: no entry point {}", key.entry);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dialects_differ_only_in_the_subgroups_directive() {
    for key in all_variants() {
        let naga_src = render(&key, Dialect::Naga).unwrap();
        let tint_src = render(&key, Dialect::Tint).unwrap();
        assert_eq!(tint_src.contains("enable subgroups;"), key.needs_subgroups(), "{key}");
        assert_eq!(tint_src.replace("enable subgroups;\n", ""), naga_src, "{key}");
        assert_eq!(naga_src.contains("enable f16;"), key.needs_f16(), "{key}");
    }
}

#[test]
fn every_variant_compiles_on_this_device() {
    let ctx = common::full_context();
    let mut compiled = 0;
    for key in all_variants() {
        if (key.needs_f16() && !ctx.caps.f16) || (key.needs_subgroups() && !ctx.caps.subgroups) {
            continue;
        }
        pollster::block_on(ctx.check_pipeline(&key)).unwrap_or_else(|e| panic!("{e}"));
        compiled += 1;
    }
    println!("{compiled} of {} variants compiled on {}", all_variants().len(), ctx.adapter_info.name);
    assert!(compiled > 0);
}

#[test]
fn variant_list_covers_every_dispatched_kernel() {
    // Run the whole self-test, then check each pipeline it compiled is in the list.
    let ctx = common::full_context();
    let reports = pollster::block_on(pupil::selftest::run_all(&ctx)).unwrap();
    let failed: Vec<String> = reports.iter().filter(|r| !r.passed).map(|r| format!("{r}")).collect();
    assert!(failed.is_empty(), "self-test cases failed:\n{}", failed.join("\n"));
    let listed = all_variants();
    for key in ctx.compiled_kernels() {
        assert!(listed.contains(&key), "{key} is dispatched but missing from ops::all_variants()");
    }
}
