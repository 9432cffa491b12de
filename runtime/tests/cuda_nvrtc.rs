//! Compiles every CUDA source the backend generates ([`catalog::all_sources`]: library row
//! programs in both layouts, the attention modules of every tiny/char spec config, the data
//! module) with NVRTC to PTX (compute_90) and CUBIN (sm_90), failing on any NVRTC error with its
//! log. No GPU needed: NVRTC comes from PyPI (`scripts/install-nvrtc.sh`, which prints
//! `KILN_NVRTC_LIB` and `KILN_CUDA_INCLUDE`).
//!
//! Without NVRTC the tests print a "skipped" line and pass, unless `KILN_REQUIRE_NVRTC=1`
//! (set by `.ci/run`), which turns a missing NVRTC into a failure.
#![cfg(feature = "cuda")]

use std::time::Instant;

use kiln_runtime::cuda::nvrtc::{self, Source, Target};
use kiln_runtime::cuda::{catalog, libs, CudaError};

/// True when NVRTC can be used; otherwise prints why the test is skipped (or fails when NVRTC
/// is required).
fn nvrtc_or_skip(test: &str) -> bool {
    match libs::require_nvrtc() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("KILN_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("KILN_REQUIRE_NVRTC=1 but NVRTC is not usable: {e}");
            }
            println!("{test}: skipped: NVRTC not installed (run scripts/install-nvrtc.sh): {e}");
            false
        }
    }
}

/// Per source: its name and the image size and NVRTC log, or the error.
type Compiled = Vec<(String, Result<(usize, String), CudaError>)>;

fn compile_all(sources: &[Source], target: Target) -> Compiled {
    // Two workers: CI machines have two cores, and NVRTC calls are independent.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(src) = sources.get(i) else { break };
                let r = nvrtc::compile(src, target).map(|img| (img.bytes.len(), img.log));
                results.lock().unwrap().push((i, src.name.clone(), r));
            });
        }
    });
    let mut r = results.into_inner().unwrap();
    r.sort_by_key(|(i, _, _)| *i);
    r.into_iter().map(|(_, n, r)| (n, r)).collect()
}

#[test]
fn every_generated_kernel_compiles_for_sm90() {
    if !nvrtc_or_skip("every_generated_kernel_compiles_for_sm90") {
        return;
    }
    let (major, minor) = nvrtc::version().expect("nvrtcVersion");
    let sources = catalog::all_sources().expect("all sources generate");
    let start = Instant::now();
    let mut failures = vec![];
    let mut warnings = vec![];
    let mut count = 0;
    for target in [Target::SM90_PTX, Target::SM90_CUBIN] {
        for (name, r) in compile_all(&sources, target) {
            count += 1;
            match r {
                Ok((bytes, log)) => {
                    assert!(bytes > 0, "{name}: empty image");
                    if !log.is_empty() {
                        warnings.push(format!("{name} ({target:?}): {log}"));
                    }
                }
                Err(e) => failures.push(format!("{name} ({target:?}):\n{e}")),
            }
        }
    }
    println!(
        "NVRTC {major}.{minor}: compiled {} sources × 2 targets ({count} images) in {:.1?}",
        sources.len(),
        start.elapsed()
    );
    // Warnings are shown, not failed on (NVRTC versions differ in what they warn about).
    for w in &warnings {
        println!("warning: {w}");
    }
    assert!(
        failures.is_empty(),
        "NVRTC errors:\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn ptx_and_cubin_are_what_they_claim() {
    if !nvrtc_or_skip("ptx_and_cubin_are_what_they_claim") {
        return;
    }
    let src = kiln_runtime::cuda::data::source();
    let ptx = nvrtc::compile(&src, Target::SM90_PTX).unwrap();
    let text = String::from_utf8_lossy(&ptx.bytes);
    assert!(text.contains(".target sm_90"), "PTX target line missing");
    for k in &src.kernels {
        assert!(
            text.contains(&format!(".entry {k}(")),
            "PTX lacks entry {k}"
        );
    }
    assert_eq!(
        ptx.bytes.last(),
        Some(&0),
        "PTX must be NUL-terminated for cuModuleLoadData"
    );
    let cubin = nvrtc::compile(&src, Target::SM90_CUBIN).unwrap();
    assert_eq!(&cubin.bytes[..4], b"\x7fELF", "CUBIN is an ELF image");
}

#[test]
fn nvrtc_errors_come_back_with_the_log() {
    if !nvrtc_or_skip("nvrtc_errors_come_back_with_the_log") {
        return;
    }
    let bad = Source {
        name: "broken".into(),
        code: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }\n".into(),
        kernels: vec!["k".into()],
        fmad: false,
    };
    match nvrtc::compile(&bad, Target::SM90_CUBIN) {
        Err(CudaError::Compile { name, log, .. }) => {
            assert_eq!(name, "broken");
            assert!(
                log.contains("undefined_name"),
                "log does not name the error: {log}"
            );
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn missing_device_is_an_error_not_a_panic() {
    // On a machine without the NVIDIA driver this must be LibraryMissing; with a driver but no
    // device, NoDevice; on a GPU machine, a device. Never a panic.
    match kiln_runtime::cuda::device::Device::open(0) {
        Ok(d) => println!("device 0: {:?}", d.info()),
        Err(e @ (CudaError::LibraryMissing { .. } | CudaError::NoDevice { .. })) => {
            let text = e.to_string();
            assert!(!text.is_empty());
            println!("no device: {text}");
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
    // A device index far past any machine's count is an error either way.
    assert!(kiln_runtime::cuda::device::Device::open(1 << 20).is_err());
}
