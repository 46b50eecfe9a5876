//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` and runs each for a fixed time.
//!
//! 1. `cargo fuzz` is installed when missing (`cargo install cargo-fuzz --locked`, about a
//!    minute and a half on two cores).
//! 2. All targets are built once with `cargo fuzz build -s none` in `fuzz/` (its own workspace
//!    and `fuzz/target`): release code with debug assertions and overflow checks, libFuzzer's
//!    coverage instrumentation, no sanitizer, so it works on the stable toolchain. The medsa
//!    crates are safe Rust; for AddressSanitizer run
//!    `RUSTC_BOOTSTRAP=1 cargo fuzz run <target>` in `fuzz/` by hand.
//! 3. Each target binary runs for `--seconds` on a working corpus `fuzz/target/corpus/<target>`
//!    (kept between runs, not committed) seeded from the committed `fuzz/corpus/<target>`, with
//!    `-rss_limit_mb=2048 -timeout=10`: any crash (panic), per-input timeout or out-of-memory
//!    fails the command, and the input is left under `fuzz/artifacts/<target>/`.
//!
//! The per-target statistics (executions, executions per second, coverage) come from
//! libFuzzer's `-print_final_stats=1` lines and its final `#N DONE` line.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Arguments of `fuzz`.
#[derive(clap::Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Run only these targets (repeatable; default: every target of fuzz/Cargo.toml).
    #[arg(long = "target", value_name = "TARGET")]
    pub targets: Vec<String>,
    /// libFuzzer's memory limit (-rss_limit_mb, also the largest single allocation).
    #[arg(long, default_value_t = 2048)]
    pub rss_limit_mb: u64,
    /// libFuzzer's limit for one input, seconds (-timeout).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// libFuzzer's random seed (-seed); 0 lets libFuzzer pick one. CI passes a fixed seed so
    /// that its short runs explore the same inputs on every submission.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only build the targets.
    #[arg(long)]
    pub build_only: bool,
}

/// What one run reported.
#[derive(Debug, Default)]
struct Stats {
    execs: Option<u64>,
    execs_per_sec: Option<u64>,
    new_units: Option<u64>,
    peak_rss_mb: Option<u64>,
    cov: Option<u64>,
    corpus: Option<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new(cargo())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Ok(());
    }
    println!("=== fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let t = Instant::now();
    let status = Command::new(cargo())
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    println!("cargo-fuzz installed in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The targets `cargo fuzz list` reports.
fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let out = Command::new(cargo())
        .args(["fuzz", "list"])
        .current_dir(fuzz_dir)
        .output()
        .context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!("cargo fuzz list failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// The number right after the first `key` in `line`.
fn num_after(line: &str, key: &str) -> Option<u64> {
    let rest = line.split_once(key)?.1.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Reads libFuzzer's final statistics out of its output.
fn parse_stats(log: &str) -> Stats {
    let mut s = Stats::default();
    for line in log.lines() {
        let line = line.trim();
        if line.starts_with("stat::number_of_executed_units:") {
            s.execs = stat_value(line);
        } else if line.starts_with("stat::average_exec_per_sec:") {
            s.execs_per_sec = stat_value(line);
        } else if line.starts_with("stat::new_units_added:") {
            s.new_units = stat_value(line);
        } else if line.starts_with("stat::peak_rss_mb:") {
            s.peak_rss_mb = stat_value(line);
        } else if line.starts_with('#') && line.contains("DONE") {
            // `#123456 DONE cov: 1234 ft: 5678 corp: 90/12Kb lim: 4096 exec/s: 2057 rss: 100Mb`
            s.execs = s.execs.or_else(|| num_after(line, "#"));
            s.cov = num_after(line, "cov:");
            s.execs_per_sec = s.execs_per_sec.or_else(|| num_after(line, "exec/s:"));
            s.corpus = line.split("corp:").nth(1).and_then(|r| r.split_whitespace().next()).map(String::from);
        }
    }
    s
}

/// The value of a `stat::name: value` line.
fn stat_value(line: &str) -> Option<u64> {
    line.rsplit(':').next()?.trim().parse().ok()
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

/// Builds and runs the fuzz targets; fails on any finding.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let root = repo_root();
    let fuzz_dir = root.join("fuzz");
    ensure_cargo_fuzz()?;
    let all = list_targets(&fuzz_dir)?;
    let targets: Vec<String> = if args.targets.is_empty() {
        all.clone()
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("unknown fuzz target {t}; the targets are {}", all.join(", "));
            }
        }
        args.targets.clone()
    };

    println!("=== fuzz: building {} target(s) (cargo fuzz build -s none)", targets.len());
    let t = Instant::now();
    let status = Command::new(cargo())
        .args(["fuzz", "build", "-s", "none"])
        .current_dir(&fuzz_dir)
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    println!("built in {:.0} s", t.elapsed().as_secs_f64());
    if args.build_only {
        return Ok(());
    }

    let bin_dir = fuzz_dir.join("target").join(host_triple()?).join("release");
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for target in &targets {
        let bin = bin_dir.join(target);
        let work = fuzz_dir.join("target/corpus").join(target);
        let seeds = fuzz_dir.join("corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        let logs = fuzz_dir.join("target/logs");
        for d in [&work, &artifacts, &logs] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        println!("\n=== fuzz: {target} for {} s", args.seconds);
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-rss_limit_mb={}", args.rss_limit_mb))
            .arg(format!("-timeout={}", args.timeout))
            .arg(format!("-seed={}", args.seed))
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&work);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        let out = cmd.output().with_context(|| format!("running {}", bin.display()))?;
        let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        let log_path = logs.join(format!("{target}.log"));
        std::fs::write(&log_path, &log).with_context(|| format!("writing {}", log_path.display()))?;
        let stats = parse_stats(&log);
        let ok = out.status.success();
        if !ok {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            println!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            let found: Vec<&str> = log.lines().filter(|l| l.contains("Test unit written to")).collect();
            println!("FAILED ({}); {}; full log {}", out.status, found.join("; "), log_path.display());
            failed.push(target.clone());
        }
        println!(
            "{target}: {} execs, {} exec/s, cov {}, corpus {}, {} new units, peak RSS {} MB",
            show(stats.execs),
            show(stats.execs_per_sec),
            show(stats.cov),
            stats.corpus.as_deref().unwrap_or("?"),
            show(stats.new_units),
            show(stats.peak_rss_mb)
        );
        rows.push((target.clone(), ok, stats));
    }

    println!("\n| target | result | seconds | total execs | execs/s | coverage | corpus | peak RSS MB |");
    println!("|---|---|---:|---:|---:|---:|---|---:|");
    for (t, ok, s) in &rows {
        println!(
            "| {t} | {} | {} | {} | {} | {} | {} | {} |",
            if *ok { "ok" } else { "FINDING" },
            args.seconds,
            show(s.execs),
            show(s.execs_per_sec),
            show(s.cov),
            s.corpus.as_deref().unwrap_or("?"),
            show(s.peak_rss_mb)
        );
    }
    if !failed.is_empty() {
        bail!(
            "fuzzing found crashes, timeouts or out-of-memory inputs in: {} (inputs under fuzz/artifacts/; \
             reproduce with fuzz/target/{}/release/<target> <input>)",
            failed.join(", "),
            host_triple().unwrap_or_default()
        );
    }
    Ok(())
}

/// The host target triple (cargo fuzz builds for it under fuzz/target/<triple>/).
fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|s| s.trim().to_string())
        .context("rustc -vV printed no host line")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_final_stats() {
        let log = "#2	INITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #123456	DONE   cov: 1234 ft: 5678 corp: 90/12Kb lim: 4096 exec/s: 2057 rss: 100Mb\n\
                   Done 123456 runs in 61 second(s)\n\
                   stat::number_of_executed_units: 123456\n\
                   stat::average_exec_per_sec:     2023\n\
                   stat::new_units_added:          12\n\
                   stat::slowest_unit_time_sec:    0\n\
                   stat::peak_rss_mb:              101\n";
        let s = parse_stats(log);
        assert_eq!(s.execs, Some(123456));
        assert_eq!(s.execs_per_sec, Some(2023));
        assert_eq!(s.new_units, Some(12));
        assert_eq!(s.peak_rss_mb, Some(101));
        assert_eq!(s.cov, Some(1234));
        assert_eq!(s.corpus.as_deref(), Some("90/12Kb"));
    }
}
