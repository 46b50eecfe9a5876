//! Golden parity against the official PyTorch code: every case of `../shared/golden` that this
//! build can run must pass the golden tolerance rule, intermediates included.

#![allow(clippy::unwrap_used)]

use medsa_model::golden::{default_dir, list_cases, run_case};
use medsa_ref::Cpu;

#[test]
fn golden_cases_pass() {
    let Some(dir) = default_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI must have ../shared/golden beside the clone");
        }
        eprintln!("skipped: no golden folder");
        return;
    };
    let mut failures = Vec::new();
    let mut ran = 0;
    for name in list_cases(&dir).unwrap() {
        let r = run_case(&dir, &name, &Cpu);
        ran += 1;
        for c in &r.checks {
            if !c.pass {
                failures.push(format!(
                    "{name}: {} err {:.3e} limit {:.3e} {:?}",
                    c.name, c.max_abs_err, c.limit, c.note
                ));
            }
        }
        if let Some(e) = &r.error {
            failures.push(format!("{name}: {e}"));
        }
        let worst = r
            .checks
            .iter()
            .filter(|c| c.limit > 0.0)
            .map(|c| (c.max_abs_err / c.limit, c.name.as_str()))
            .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a });
        eprintln!(
            "{name}: {} tensors, worst err/limit {:.3} ({}), {}",
            r.checks.len(),
            worst.0,
            worst.1,
            if r.passed() { "PASS" } else { "FAIL" }
        );
    }
    assert!(ran > 0, "no golden case ran");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
