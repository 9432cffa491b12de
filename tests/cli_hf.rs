//! `kiln import`, `kiln logits`, `kiln export` end to end through the binary, against the
//! `transformers` fixtures; and, where Python has torch and transformers (CI has not: the test
//! then prints that it skipped that part), the exports loaded by `from_pretrained` reproduce the
//! fixtures' logits, and a Kiln-trained GPT-2 exported greedy-generates what `kiln generate` does.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cli_common::{kiln, repo, stderr, stdout};
use kiln_runtime::hf::read_safetensors;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = kiln(dir, args);
    assert!(
        o.status.success(),
        "kiln {args:?} failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Imports and exports every fixture into `dir`; returns the export folders.
fn import_export(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for m in ["gpt2", "llama", "t5"] {
        let spec = repo().join(format!("specs/{m}.kiln"));
        let fixture = repo().join(format!("fixtures/{m}"));
        let ckpt = dir.join(format!("{m}.safetensors"));
        let hf = dir.join(format!("{m}_hf"));
        ok(
            dir,
            &[
                "import",
                "--spec",
                spec.to_str().unwrap(),
                "--model",
                m,
                fixture.to_str().unwrap(),
                "--out",
                ckpt.to_str().unwrap(),
            ],
        );
        ok(
            dir,
            &[
                "export",
                ckpt.to_str().unwrap(),
                "--out",
                hf.to_str().unwrap(),
            ],
        );
        out.push((m.to_string(), hf));
    }
    out
}

#[test]
fn logits_command_matches_the_fixtures() {
    let dir = tmpdir("logits");
    import_export(&dir);
    for m in ["gpt2", "llama", "t5"] {
        let io = repo().join(format!("fixtures/{m}/io.safetensors"));
        let out = dir.join(format!("{m}.out.safetensors"));
        ok(
            &dir,
            &[
                "logits",
                dir.join(format!("{m}.safetensors")).to_str().unwrap(),
                "--input",
                io.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--grads",
            ],
        );
        let got = read_safetensors(&out).unwrap().floats;
        let want = read_safetensors(&io).unwrap().floats;
        let mut names = 0;
        for (k, r) in &want {
            let g = got
                .get(k)
                .unwrap_or_else(|| panic!("{m}: `{k}` not written"));
            assert_eq!(g.shape, r.shape, "{m}: {k}");
            let diff: f64 = g
                .data
                .iter()
                .zip(&r.data)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm: f64 = r
                .data
                .iter()
                .map(|b| f64::from(*b).powi(2))
                .sum::<f64>()
                .sqrt();
            let max = g
                .data
                .iter()
                .zip(&r.data)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
                .fold(0.0, f64::max);
            match k.as_str() {
                "logits" => assert!(max <= 1e-4, "{m}: logits differ by {max:e}"),
                "loss" => assert!(max / norm <= 1e-5, "{m}: loss rel diff {:e}", max / norm),
                _ => assert!(diff / norm <= 1e-4, "{m}: {k} rel error {:e}", diff / norm),
            }
            names += 1;
        }
        assert_eq!(names, got.len(), "{m}: extra outputs");
    }
    // Without labels: logits only; --grads without labels is an error that says why.
    let ids_only = dir.join("ids.safetensors");
    let io = read_safetensors(&repo().join("fixtures/gpt2/io.safetensors")).unwrap();
    write_ids(
        &ids_only,
        &io.ints["input_ids"].shape,
        &io.ints["input_ids"].data,
    );
    let ckpt = dir.join("gpt2.safetensors");
    let out = dir.join("ids.out.safetensors");
    ok(
        &dir,
        &[
            "logits",
            ckpt.to_str().unwrap(),
            "--input",
            ids_only.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let got = read_safetensors(&out).unwrap().floats;
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["logits"]);
    let o = kiln(
        &dir,
        &[
            "logits",
            ckpt.to_str().unwrap(),
            "--input",
            ids_only.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--grads",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs `labels`"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A safetensors file holding one i64 tensor `input_ids`.
fn write_ids(path: &Path, shape: &[usize], data: &[i64]) {
    let header = format!(
        "{{\"input_ids\":{{\"dtype\":\"I64\",\"shape\":{shape:?},\"data_offsets\":[0,{}]}}}}",
        data.len() * 8
    );
    let mut h = header.into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    for x in data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Whether `python3` can import torch and transformers; prints the skip otherwise.
fn have_torch(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import torch, transformers, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!("{test}: SKIPPED the transformers check: python3 with torch and transformers is not available");
    }
    ok
}

fn python(script: &str, args: &[&str]) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run python3");
    assert!(
        o.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const LOAD_AND_RUN: &str = r#"
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration
args = sys.argv[1:]
for name, folder, io in zip(args[0::3], args[1::3], args[2::3]):
    cls = T5ForConditionalGeneration if name == "t5" else AutoModelForCausalLM
    model = cls.from_pretrained(folder, attn_implementation="eager").eval()
    t = load_file(io)
    kw = {"input_ids": t["input_ids"]}
    if "decoder_input_ids" in t:
        kw["decoder_input_ids"] = t["decoder_input_ids"]
    with torch.no_grad():
        logits = model(**kw).logits
    print(name, (logits.float() - t["logits"]).abs().max().item())
"#;

#[test]
fn exports_load_in_transformers() {
    let dir = tmpdir("torch");
    let exports = import_export(&dir);
    if !have_torch("exports_load_in_transformers") {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let mut args = Vec::new();
    for (m, hf) in &exports {
        let io = repo().join(format!("fixtures/{m}/io.safetensors"));
        args.extend([
            m.clone(),
            hf.display().to_string(),
            io.display().to_string(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let printed = python(LOAD_AND_RUN, &args);
    let mut seen = 0;
    for line in printed.lines() {
        let (m, diff) = line.split_once(' ').expect("NAME DIFF");
        let diff: f64 = diff.trim().parse().unwrap();
        println!("{m}: transformers on the export, logits max abs diff {diff:.3e}");
        assert!(
            diff <= 1e-4,
            "{m}: transformers' logits on the export differ by {diff:e}"
        );
        seen += 1;
    }
    assert_eq!(seen, exports.len(), "python printed:\n{printed}");
    let _ = std::fs::remove_dir_all(&dir);
}

const GREEDY: &str = r#"
import sys, torch
from transformers import GPT2LMHeadModel
folder, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = GPT2LMHeadModel.from_pretrained(folder).eval()
ids = torch.tensor([list(prompt.encode("utf-8"))])
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
sys.stdout.write(bytes(out[0].tolist()).decode("utf-8", errors="replace"))
"#;

#[test]
fn trained_gpt2_export_generates_like_kiln() {
    let dir = tmpdir("gen");
    let corpus: String = std::fs::read_to_string(repo().join("data/tinyshakespeare.txt"))
        .unwrap()
        .chars()
        .take(200_000)
        .collect();
    std::fs::write(dir.join("corpus.txt"), corpus).unwrap();
    let yaml = format!(
        "spec: {}\nmodel: gpt2_tiny\nset: {{vocab: 256}}\n\
         data:\n  path: corpus.txt\n  val_fraction: 0.1\n  tokenizer: byte\n\
         batch_size: 16\nseq_len: 32\nsteps: 500\noptimizer: {{lr: 2.0e-2, beta2: 0.99}}\n\
         schedule: {{warmup: 10}}\neval: {{every: 500, batches: 1}}\n\
         checkpoint: {{every: 500, keep: 1}}\nlog_every: 100\nout_dir: out\n",
        repo().join("specs/gpt2.kiln").display()
    );
    std::fs::write(dir.join("run.yaml"), yaml).unwrap();
    ok(&dir, &["train", "run.yaml", "--executor", "cpu"]);
    let latest = std::fs::read_to_string(dir.join("out/checkpoints/latest"))
        .or_else(|_| std::fs::read_to_string(dir.join("out/latest")))
        .unwrap_or_default();
    let ckpt = find_checkpoint(&dir.join("out"), latest.trim());
    ok(&dir, &["export", ckpt.to_str().unwrap(), "--out", "hf"]);
    let prompt = "ROMEO:";
    let kiln_text = ok(
        &dir,
        &[
            "generate",
            ckpt.to_str().unwrap(),
            "--prompt",
            prompt,
            "--tokens",
            "24",
            "--temperature",
            "0",
        ],
    );
    let kiln_text = kiln_text
        .strip_suffix('\n')
        .unwrap_or(&kiln_text)
        .to_string();
    if !have_torch("trained_gpt2_export_generates_like_kiln") {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let hf = dir.join("hf");
    let hf_text = python(GREEDY, &[hf.to_str().unwrap(), prompt, "24"]);
    println!("kiln generate: {kiln_text:?}\ntransformers:  {hf_text:?}");
    assert_eq!(kiln_text, hf_text);
    // A continuation of only spaces would compare nothing.
    assert!(
        kiln_text[prompt.len()..]
            .chars()
            .filter(|c| c.is_alphabetic())
            .count()
            >= 4,
        "degenerate continuation: {kiln_text:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The newest `*.safetensors` checkpoint under `out` (the `latest` pointer's when it names one).
fn find_checkpoint(out: &Path, latest: &str) -> PathBuf {
    let mut found = Vec::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "safetensors") {
                found.push(p);
            }
        }
    }
    found.sort();
    if let Some(p) = found
        .iter()
        .find(|p| !latest.is_empty() && p.ends_with(latest))
    {
        return p.clone();
    }
    found.pop().expect("a checkpoint")
}
