//! Golden tests for the compiler: every `testdata/<case>.in.yaml` compiles to
//! the snapshot and statuses in `testdata/<case>.out.yaml`.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p agimo-controller --test golden`
//! and review the diff.

use std::path::{Path, PathBuf};

use agimo_controller::Carryover;
use agimo_controller::sources::files;

#[derive(serde::Serialize)]
struct Golden<'a> {
    snapshot: &'a agimo_shared::Snapshot,
    statuses: &'a agimo_controller::Statuses,
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(!cases.is_empty(), "no golden cases found");
    let mut failures = Vec::new();
    for input in cases {
        let world = files::load(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        let first = agimo_controller::compile(&world, &Carryover::default());
        let (snapshot, statuses) = (&first.snapshot, &first.statuses);
        let got = serde_yaml_ng::to_string(&Golden { snapshot, statuses }).expect("serialize");
        // Compiling twice gives the same output: the compiler is deterministic.
        let second = agimo_controller::compile(&world, &Carryover::default());
        let again = serde_yaml_ng::to_string(&Golden { snapshot: &second.snapshot, statuses: &second.statuses })
            .expect("serialize");
        assert_eq!(got, again, "{}: compile is not deterministic", input.display());
        let output = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".out.yaml"));
        if update {
            std::fs::write(&output, &got).expect("write golden");
            continue;
        }
        match std::fs::read_to_string(&output) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!("{}:\n{}", output.display(), diff(&want, &got))),
            Err(_) => failures.push(format!("{} is missing; run with UPDATE_GOLDEN=1", output.display())),
        }
    }
    assert!(failures.is_empty(), "golden mismatches:\n{}", failures.join("\n"));
}

/// A small line diff: enough to see what changed without a dependency.
fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    let first = w.iter().zip(&g).position(|(a, b)| a != b).unwrap_or(w.len().min(g.len()));
    for line in w.iter().skip(first).take(10) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in g.iter().skip(first).take(10) {
        out.push_str(&format!("+ {line}\n"));
    }
    format!("first difference at line {}:\n{out}", first + 1)
}
