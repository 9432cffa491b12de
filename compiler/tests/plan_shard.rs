//! Tensor and sequence parallelism: the layouts propagation finds are Megatron-LM's (column- and
//! row-parallel attention and MLP, vocabulary-parallel embedding and cross entropy), each layer
//! communicates what Megatron's does, with the byte counts of the tensors it moves.

use std::path::Path;

use kiln_compiler::plan::shard::{CollectiveKind, Layout, Reduce};
use kiln_compiler::plan::{self, Analysis, PlanOptions};
use kiln_compiler::sema::plancheck::RecomputePolicy;
use kiln_compiler::sema::{render, Workspace};

fn analysis(spec: &str, config: &str, tensor: u64, sequence: bool) -> Analysis {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs").join(spec)).unwrap();
    let mut ws = Workspace::new();
    ws.add_file(&format!("specs/{spec}"), &text);
    let o = PlanOptions {
        model: Some(config.into()),
        batch: Some(2),
        seq: Some(8),
        recompute: Some(RecomputePolicy::None),
        tensor: Some(tensor),
        sequence: Some(sequence),
        unfused: true,
        ..Default::default()
    };
    let s = plan::setup(&ws, &o)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
    plan::analyze(&ws, &s)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()))
}

fn layout(a: &Analysis, param: &str) -> Layout {
    a.sharding.layout_of(
        a.rewritten
            .graph
            .find_param(param)
            .unwrap_or_else(|| panic!("no param {param}")),
    )
}

/// Collectives whose first reader is in `layer` and in the forward (or not) pass.
fn layer_collectives(a: &Analysis, layer: &str, forward: bool) -> Vec<(CollectiveKind, u64)> {
    let li = a
        .roles2
        .layers
        .iter()
        .position(|l| l == layer)
        .expect("layer");
    let mut out: Vec<(CollectiveKind, u64)> = a
        .sharding
        .collectives
        .iter()
        .filter(|c| {
            a.roles2.layer_of(c.readers[0]) == Some(li)
                && a.roles2.is_forward(c.readers[0]) == forward
        })
        .map(|c| (c.kind, c.full_bytes))
        .collect();
    out.sort();
    out
}

#[test]
fn gpt2_layouts_are_megatrons() {
    let a = analysis("gpt2.kiln", "gpt2_tiny", 2, false);
    for p in [
        "h.0.attn.q.weight",
        "h.0.attn.k.weight",
        "h.0.attn.v.weight",
        "h.1.mlp.fc.weight",
    ] {
        assert_eq!(layout(&a, p), Layout::Split(1), "{p} is column parallel");
    }
    for p in ["h.0.attn.q.bias", "h.1.mlp.fc.bias"] {
        assert_eq!(
            layout(&a, p),
            Layout::Split(0),
            "{p} follows its column-parallel layer"
        );
    }
    for p in ["h.0.attn.o.weight", "h.1.mlp.proj.weight"] {
        assert_eq!(layout(&a, p), Layout::Split(0), "{p} is row parallel");
    }
    assert_eq!(
        layout(&a, "wte"),
        Layout::Split(0),
        "the tied embedding is vocabulary parallel"
    );
    for p in ["h.0.ln_1.weight", "h.0.attn.o.bias", "wpe", "ln_f.bias"] {
        assert_eq!(layout(&a, p), Layout::Replicated, "{p}");
    }
    // Per-rank shapes: heads split, the vocabulary split.
    let g = &a.rewritten.graph;
    assert_eq!(
        a.sharding.local_shape[&g.find_param("h.0.attn.q.weight").unwrap()],
        vec![32, 16]
    );
    assert_eq!(
        a.sharding.local_shape[&g.find_param("wte").unwrap()],
        vec![48, 32]
    );
}

#[test]
fn each_layer_all_reduces_twice_forward_and_twice_backward() {
    let a = analysis("gpt2.kiln", "gpt2_tiny", 2, false);
    // [batch 2, seq 8, d 32] f32.
    let bsd = 2 * 8 * 32 * 4;
    let ar = CollectiveKind::AllReduce(Reduce::Sum);
    for layer in ["h.0", "h.1"] {
        assert_eq!(
            layer_collectives(&a, layer, true),
            vec![(ar, bsd), (ar, bsd)],
            "{layer} forward"
        );
        assert_eq!(
            layer_collectives(&a, layer, false),
            vec![(ar, bsd), (ar, bsd)],
            "{layer} backward"
        );
    }
    for c in &a.sharding.collectives {
        assert_eq!(c.wire_bytes, c.kind.wire_bytes(c.full_bytes, 2));
    }
}

#[test]
fn sequence_parallel_layers_gather_and_scatter() {
    let a = analysis("gpt2.kiln", "gpt2_tiny", 2, true);
    let bsd = 2 * 8 * 32 * 4;
    let fwd = layer_collectives(&a, "h.0", true);
    assert_eq!(
        fwd,
        vec![
            (CollectiveKind::AllGather, bsd),
            (CollectiveKind::AllGather, bsd),
            (CollectiveKind::ReduceScatter, bsd),
            (CollectiveKind::ReduceScatter, bsd)
        ]
    );
    // Norms, dropout and the residual stream hold a block of the sequence.
    let g = &a.rewritten.graph;
    let ln = a
        .roles2
        .order
        .iter()
        .find(|v| g.node(**v).name() == Some("h.0.ln_1") && g.shape(**v).len() == 3)
        .unwrap();
    assert_eq!(a.sharding.layout_of(*ln), Layout::Split(1));
    // The backward re-gathers what the weight gradients need and reduce-scatters input gradients;
    // norm weight gradients are summed over the sequence blocks.
    let bwd = layer_collectives(&a, "h.0", false);
    assert!(
        bwd.iter()
            .filter(|(k, _)| *k == CollectiveKind::ReduceScatter)
            .count()
            >= 2,
        "{bwd:?}"
    );
    assert!(
        bwd.iter()
            .any(|(k, b)| *k == CollectiveKind::AllReduce(Reduce::Sum) && *b == 32 * 4),
        "{bwd:?}"
    );
}

#[test]
fn cross_entropy_is_vocabulary_parallel() {
    let a = analysis("gpt2.kiln", "gpt2_tiny", 2, false);
    let g = &a.rewritten.graph;
    let logits_bytes = 2 * 8 * 96 * 4;
    // No collective moves the logits; the loss needs three [batch, seq] all-reduces.
    assert!(a
        .sharding
        .collectives
        .iter()
        .all(|c| c.full_bytes < logits_bytes));
    let ce: Vec<CollectiveKind> = a
        .sharding
        .collectives
        .iter()
        .filter(|c| {
            a.roles2.is_forward(c.readers[0]) && g.node(c.value).name() == Some("cross_entropy")
        })
        .map(|c| c.kind)
        .collect();
    assert_eq!(ce.len(), 3, "{ce:?}");
    assert!(ce.contains(&CollectiveKind::AllReduce(Reduce::Max)));
}

#[test]
fn grouped_query_and_multi_query_attention_shard() {
    // LLaMA tiny: 4 query heads, 2 key/value heads over 2 ranks; PaLM tiny: one key/value head.
    let a = analysis("llama.kiln", "llama_tiny", 2, true);
    assert_eq!(layout(&a, "layers.0.self_attn.k.weight"), Layout::Split(1));
    assert_eq!(layout(&a, "layers.0.mlp.down.weight"), Layout::Split(0));
    let p = analysis("palm.kiln", "palm_tiny", 2, false);
    assert_eq!(layout(&p, "layer.0.attn.q.weight"), Layout::Split(1));
    assert!(
        p.report.per_device_bytes.params
            < analysis("palm.kiln", "palm_tiny", 1, false)
                .report
                .per_device_bytes
                .params
    );
}

#[test]
fn rank_programs_list_local_shapes_and_collectives() {
    let a = analysis("gpt2.kiln", "gpt2_tiny", 2, true);
    let text = plan::print::print_rank(&a, 0);
    assert!(text.contains("all-gather %") && text.contains("reduce-scatter %"));
    assert!(
        text.contains(": f32[2, 4, 32] split(1)"),
        "sequence blocks of 4 tokens"
    );
}
