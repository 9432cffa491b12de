//! The `budget` recompute planner against exhaustive search on random graphs small enough to try
//! every recompute set, and on GPT-3 175B at Korthikanti et al.'s layout, where it must fit 80 GB.

use std::path::Path;

use kiln_compiler::plan::recompute::{Candidate, Problem};
use kiln_compiler::plan::{self, PlanOptions};
use kiln_compiler::sema::plancheck::RecomputePolicy;
use kiln_compiler::sema::{render, Workspace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A random DAG of forward values: each reads up to three earlier ones; some are read by backward.
fn random_problem(r: &mut ChaCha8Rng, n: usize) -> Problem {
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let k = if i == 0 {
            0
        } else {
            r.random_range(0..=3.min(i))
        };
        let mut inputs: Vec<usize> = (0..k).map(|_| r.random_range(0..i)).collect();
        inputs.sort();
        inputs.dedup();
        nodes.push(Candidate {
            inputs,
            bytes: r.random_range(1..100),
            flops: r.random_range(0..1000),
            needed: r.random_bool(0.5),
            can_recompute: r.random_bool(0.85),
            can_save: r.random_bool(0.9),
        });
    }
    Problem { nodes }
}

/// The fewest recompute FLOPs over every subset that fits the budget.
fn exhaustive(p: &Problem, budget: u64) -> Option<u64> {
    let n = p.nodes.len();
    let mut best: Option<u64> = None;
    for mask in 0u32..(1 << n) {
        let r: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
        if let Some(c) = p.evaluate(&r) {
            if c.kept_bytes <= budget && best.is_none_or(|b| c.recompute_flops < b) {
                best = Some(c.recompute_flops);
            }
        }
    }
    best
}

#[test]
fn budget_matches_exhaustive_search_on_random_graphs() {
    let mut r = ChaCha8Rng::seed_from_u64(42);
    let mut checked = 0;
    for case in 0..150 {
        let n = r.random_range(3..=13);
        let p = random_problem(&mut r, n);
        let all: u64 = p.nodes.iter().map(|c| c.bytes).sum();
        for budget in [0, all / 8, all / 4, all / 2, all] {
            let want = exhaustive(&p, budget);
            let got = p.budget(budget);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(c)) => {
                    assert!(c.kept_bytes <= budget, "case {case}: over budget");
                    assert_eq!(
                        p.evaluate(&c.recompute).as_ref(),
                        Some(c),
                        "case {case}: inconsistent choice"
                    );
                    assert_eq!(
                        c.recompute_flops, w,
                        "case {case} (n={n}, budget {budget}): planner {} vs optimum {w}",
                        c.recompute_flops
                    );
                    checked += 1;
                }
                _ => panic!("case {case} budget {budget}: planner {got:?} vs exhaustive {want:?}"),
            }
        }
    }
    assert!(checked > 300, "only {checked} feasible cases");
}

#[test]
fn min_bytes_cut_matches_exhaustive_search() {
    // The cut the rule-based policies use: fewest kept bytes, then fewest FLOPs.
    let mut r = ChaCha8Rng::seed_from_u64(7);
    for case in 0..150 {
        let n = r.random_range(2..=12);
        let p = random_problem(&mut r, n);
        let mut best: Option<(u64, u64)> = None;
        for mask in 0u32..(1 << n) {
            let rr: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
            if let Some(c) = p.evaluate(&rr) {
                let key = (c.kept_bytes, c.recompute_flops);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                }
            }
        }
        let got = p.min_bytes().map(|c| (c.kept_bytes, c.recompute_flops));
        assert_eq!(got, best, "case {case}");
    }
}

#[test]
fn gpt3_175b_fits_80_gb_at_the_papers_layout_with_a_budget() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs/gpt3.kiln")).unwrap();
    let mut ws = Workspace::new();
    ws.add_file("specs/gpt3.kiln", &text);
    let run = |policy: RecomputePolicy| {
        let o = PlanOptions {
            plan: Some("gpt3_175b_korthikanti".into()),
            recompute: Some(policy),
            ..Default::default()
        };
        let s = plan::setup(&ws, &o)
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
        plan::analyze(&ws, &s)
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()))
    };
    let none = run(RecomputePolicy::None);
    let selective = run(RecomputePolicy::Selective);
    let full = run(RecomputePolicy::Full);
    let cap = none.report.device_memory_bytes;
    let pd = none.report.per_device_bytes;
    assert!(!none.report.fits || pd.activations > 0);
    // What is left for activations on an 80 GB device.
    let room = cap - (pd.params + pd.grads + pd.optimizer + pd.workspace);
    for budget in [room, selective.report.per_device_bytes.activations] {
        let b = run(RecomputePolicy::Budget(budget));
        let r = &b.report;
        eprintln!(
            "budget {:.1} GiB: activations {:.1} GiB, total {:.1} GiB, recompute {:.2e} FLOP/step (selective {:.2e}, full {:.2e})",
            budget as f64 / 1073741824.0,
            r.per_device_bytes.activations as f64 / 1073741824.0,
            r.per_device_bytes.total as f64 / 1073741824.0,
            r.recompute_flops_per_step,
            selective.report.recompute_flops_per_step,
            full.report.recompute_flops_per_step
        );
        assert!(r.fits, "{:?}", r.per_device_bytes);
        assert!(
            r.per_device_bytes.activations <= budget * 101 / 100,
            "activations over the budget"
        );
        assert!(r.recompute_flops_per_step <= full.report.recompute_flops_per_step);
    }
    // With selective's memory, the budget planner recomputes no more than selective does.
    let b = run(RecomputePolicy::Budget(
        selective.report.per_device_bytes.activations,
    ));
    assert!(
        b.report.recompute_flops_per_step <= selective.report.recompute_flops_per_step * 1.0001
    );
}
