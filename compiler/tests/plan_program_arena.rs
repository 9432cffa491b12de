//! The memory planner over fused programs (`plan::arena`): for every tiny spec, the arena of the
//! training program the CPU runtime runs is valid by the planner's independent checker (every
//! buffer inside the arena, no two live buffers sharing a byte except a declared in-place write,
//! and a simulated step reads nothing clobbered), it reuses bytes in place, its categories add up
//! to the arena, and `kiln plan` reports exactly it for a single `cpu` device, and only then.

use std::path::Path;

use kiln_compiler::plan::{self, arena, cpu, validate, BufKey, MemorySource, PlanOptions};
use kiln_compiler::program::BufferKind;
use kiln_compiler::sema::plancheck::RecomputePolicy;
use kiln_compiler::sema::{render, Workspace};

fn workspace(spec: &str) -> Workspace {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs").join(spec)).expect("spec");
    let mut ws = Workspace::new();
    ws.add_file(&format!("specs/{spec}"), &text);
    ws
}

const TINY: [(&str, &str, &str); 5] = [
    ("gpt2.kiln", "gpt2_tiny", "causal_lm"),
    ("gpt3.kiln", "gpt3_tiny", "causal_lm"),
    ("llama.kiln", "llama_tiny", "causal_lm"),
    ("palm.kiln", "palm_tiny", "causal_lm"),
    ("t5.kiln", "t5_tiny", "seq2seq"),
];

fn options(config: &str) -> PlanOptions {
    PlanOptions {
        model: Some(config.into()),
        batch: Some(2),
        seq: Some(8),
        ..Default::default()
    }
}

#[test]
fn program_arenas_are_valid_and_reported_by_kiln_plan() {
    let mut in_place_total = 0;
    for (spec, config, objective) in TINY {
        let ws = workspace(spec);
        let p = cpu::training_program(&ws, config, &[], objective, 2, 8, &cpu::train_defaults())
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
        let a = arena::plan_program(&p);
        let errs = validate(&a.schedule, &a.input, &a.memory.arena);
        assert!(
            errs.is_empty(),
            "{config}: {}",
            errs[..errs.len().min(5)].join("\n")
        );
        assert!(a.total() >= a.live_peak() && a.total().is_multiple_of(arena::ALIGNMENT));
        let b = a.bytes;
        assert_eq!(b.total(), a.total(), "{config}: {b:?}");
        // Parameters and optimizer state are the program's state buffers, aligned.
        let state = |opt: bool| -> u64 {
            p.state
                .iter()
                .filter(|s| s.name.starts_with("opt.") == opt)
                .map(|s| (p.buffer(s.buffer).len as u64 * 4).div_ceil(64) * 64)
                .sum()
        };
        assert_eq!(
            (b.params, b.optimizer),
            (state(false), state(true)),
            "{config}"
        );
        assert!(b.grads > 0, "{config}: {b:?}");
        // Writes that took a dying read's bytes.
        let in_place = a
            .schedule
            .steps
            .iter()
            .flat_map(|s| &s.in_place)
            .filter(|(w, r)| a.memory.class_of[w] == a.memory.class_of[r])
            .count();
        in_place_total += in_place;
        // Constants and state that no update replaces hold their bytes to the end.
        for (i, buf) in p.buffers.iter().enumerate() {
            if matches!(buf.kind, BufferKind::Const(_)) && buf.len > 0 {
                let l = a.memory.lifetimes[&BufKey::Buffer(i as u32)];
                assert_eq!((l.first, l.last), (0, a.memory.steps + 1), "{config}: b{i}");
            }
        }

        let s = plan::setup(&ws, &options(config)).unwrap();
        let an = plan::analyze(&ws, &s).unwrap();
        assert_eq!(an.report.memory_source, MemorySource::CpuRuntimeArena);
        assert_eq!(an.report.per_device_bytes.total, a.total(), "{config}");
        assert_eq!(an.report.arena_bytes, a.total(), "{config}");
        assert_eq!(an.report.per_device_bytes.grads, b.grads, "{config}");
        eprintln!(
            "{config}: {} kernels, arena {} (live peak {}), {in_place} writes in place, {b:?}",
            p.steps.len(),
            a.total(),
            a.live_peak()
        );
    }
    assert!(in_place_total > 0, "no write reused a dying read in place");
}

#[test]
fn the_checker_rejects_a_program_arena_that_overlaps_live_buffers() {
    let ws = workspace("gpt2.kiln");
    let p = cpu::training_program(
        &ws,
        "gpt2_tiny",
        &[],
        "causal_lm",
        2,
        8,
        &cpu::train_defaults(),
    )
    .unwrap();
    let a = arena::plan_program(&p);
    // Move the first parameter onto the second: both live for the whole step.
    let mut bad = a.memory.arena.clone();
    let (p0, p1) = (p.state[0].buffer, p.state[1].buffer);
    let at = bad.slots[&BufKey::Buffer(p1.0)].offset;
    bad.slots.get_mut(&BufKey::Buffer(p0.0)).unwrap().offset = at;
    assert!(!validate(&a.schedule, &a.input, &bad).is_empty());
}

#[test]
fn other_layouts_devices_and_policies_keep_the_estimate() {
    let ws = workspace("gpt2.kiln");
    let cases: Vec<(&str, PlanOptions)> = vec![
        (
            "a100",
            PlanOptions {
                device: Some("a100-80gb".into()),
                ..options("gpt2_tiny")
            },
        ),
        (
            "tensor 2",
            PlanOptions {
                tensor: Some(2),
                ..options("gpt2_tiny")
            },
        ),
        (
            "data 2",
            PlanOptions {
                data: Some(2),
                batch: Some(4),
                ..options("gpt2_tiny")
            },
        ),
        (
            "recompute full",
            PlanOptions {
                recompute: Some(RecomputePolicy::Full),
                ..options("gpt2_tiny")
            },
        ),
        (
            "unfused",
            PlanOptions {
                unfused: true,
                ..options("gpt2_tiny")
            },
        ),
        (
            "bf16",
            PlanOptions {
                precision: Some(kiln_compiler::ir::DType::BF16),
                ..options("gpt2_tiny")
            },
        ),
        ("gpt2_xl", options("gpt2_xl")),
    ];
    for (what, o) in cases {
        let s = plan::setup(&ws, &o).unwrap();
        let a = plan::analyze(&ws, &s).unwrap();
        assert_eq!(a.report.memory_source, MemorySource::Analytic, "{what}");
        assert!(a.runtime_arena.is_none(), "{what}");
    }
}
