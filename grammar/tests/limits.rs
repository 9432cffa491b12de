//! The nesting limits: inputs just inside them parse and format within a 2 MiB thread stack (the
//! size of a test thread, and Rust's default for spawned threads); inputs just outside them get a
//! `syntax::too_deep` diagnostic instead of a stack overflow, however long they are.

use kiln_grammar::limits::{MAX_ELSE_IF, MAX_EXPR_DEPTH, MAX_NESTING};
use kiln_grammar::{format, parse};

/// Runs `f` on a thread with a 2 MiB stack; a stack overflow aborts the test binary, which fails.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

fn codes(src: &str) -> Vec<&'static str> {
    match parse(src) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.code()).collect(),
    }
}

fn parses_and_formats(src: String) {
    on_small_stack(move || {
        let file = parse(&src).unwrap_or_else(|e| panic!("should parse: {}", e[0].message));
        let out = format(&file, &src);
        assert!(parse(&out).is_ok());
    });
}

/// The worst inputs that are still accepted, one per way of nesting.
fn deepest_accepted() -> Vec<String> {
    let n = MAX_NESTING;
    vec![
        format!("fn f(x) = {}x{}", "(".repeat(n), ")".repeat(n)),
        format!("fn f(x) = {}x{}", "g(".repeat(n), ")".repeat(n)),
        format!("fn f(x) = {}x{}", "[".repeat(n), "]".repeat(n)),
        format!("fn f(x) = {}1{}", "x[".repeat(n / 2), "]".repeat(n / 2)),
        format!(
            "fn f(x) = {}x{}",
            "if ".repeat(n),
            " then 1 else 2".repeat(n)
        ),
        format!(
            "fn f(x) = {}x{}",
            "(if ".repeat(n / 2),
            " then 1 else 2)".repeat(n / 2)
        ),
        // The body's own `{` is one level.
        format!(
            "block b(x) {{ {} y = x {} }}",
            "if x { ".repeat(n - 1),
            "} ".repeat(n - 1)
        ),
        format!(
            "block b(x) {{ {} y = x {} }}",
            "repeat x { ".repeat(n - 1),
            "} ".repeat(n - 1)
        ),
        format!("fn f(x) = {}x", "-".repeat(MAX_EXPR_DEPTH as usize - 1)),
        format!("fn f(x) = {}x", "not ".repeat(MAX_EXPR_DEPTH as usize - 1)),
        format!("fn f(x) = x{}", " ** x".repeat(MAX_EXPR_DEPTH as usize - 1)),
        format!("fn f(x) = x{}", " + x".repeat(MAX_EXPR_DEPTH as usize - 1)),
        format!("fn f(x) = x{}", ".d".repeat(MAX_EXPR_DEPTH as usize - 1)),
        format!(
            "fn f(x) = {} 1",
            "if x then 1 else ".repeat(MAX_EXPR_DEPTH as usize - 1)
        ),
        format!(
            "block b(x) {{ if x {{ }} {} }}",
            "else if x { } ".repeat(MAX_ELSE_IF)
        ),
    ]
}

#[test]
fn deepest_accepted_inputs_fit_a_small_stack() {
    for src in deepest_accepted() {
        assert!(
            codes(&src).is_empty(),
            "should parse: {}: {:?}",
            &src[..src.len().min(60)],
            codes(&src)
        );
        parses_and_formats(src);
    }
}

#[test]
fn one_level_deeper_is_a_diagnostic() {
    let n = MAX_NESTING + 1;
    let d = MAX_EXPR_DEPTH as usize;
    let cases = [
        format!("fn f(x) = {}x{}", "(".repeat(n), ")".repeat(n)),
        format!("fn f(x) = {}x{}", "g(".repeat(n), ")".repeat(n)),
        format!(
            "fn f(x) = {}x{}",
            "if ".repeat(n),
            " then 1 else 2".repeat(n)
        ),
        format!("fn f(x) = {}x", "-".repeat(d + 1)),
        format!("fn f(x) = x{}", " ** x".repeat(d + 1)),
        format!("fn f(x) = x{}", " + x".repeat(d + 1)),
        format!("fn f(x) = {} 1", "if x then 1 else ".repeat(d + 1)),
        format!(
            "block b(x) {{ if x {{ }} {} }}",
            "else if x { } ".repeat(MAX_ELSE_IF + 1)
        ),
        format!(
            "block b(x) {{ {} y = x {} }}",
            "if x { ".repeat(n - 1),
            "} ".repeat(n - 1)
        ),
    ];
    for src in cases {
        let c = on_small_stack({
            let src = src.clone();
            move || codes(&src)
        });
        assert!(
            c.contains(&"syntax::too_deep"),
            "{}: {c:?}",
            &src[..src.len().min(60)]
        );
    }
}

#[test]
fn huge_inputs_are_refused_without_overflow() {
    // 200 kB of each kind of nesting (thousands of levels): refused, never a stack overflow.
    for unit in ["(", "[", "{", "-", "not ", "if ", "x ** ", "x + ", "f("] {
        let src = format!("fn f(x) = {}x", unit.repeat(200_000 / unit.len()));
        let started = std::time::Instant::now();
        let c = on_small_stack(move || codes(&src));
        assert!(!c.is_empty(), "`{unit}` x 200k should not parse");
        assert!(
            started.elapsed().as_secs() < 20,
            "`{unit}` x 200k took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn plan_keys_named_if_do_not_count_as_nesting() {
    // The pre-scan counts pending `if`s; a plan key spelled `if` is not one.
    let src = format!("plan p for m {{ {} }}", "if = 1; ".repeat(MAX_NESTING * 2));
    assert!(codes(&src).is_empty(), "{:?}", codes(&src));
}
