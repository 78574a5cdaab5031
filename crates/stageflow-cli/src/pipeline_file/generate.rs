//! Generated pipeline files, for scale tests and demos: `stageflow generate --stages N`.

use std::fmt::Write;

/// A chain of `n` stages, each running `true` after the one before: the file
/// `examples/chain-500.toml` is `chain(500)`.
pub fn chain(n: usize) -> String {
    let mut out = String::with_capacity(n * 48 + 256);
    let _ = write!(
        out,
        "# A generated chain of {n} stages, each after the one before.\n\
         # Regenerate with: stageflow generate --stages {n} > chain-{n}.toml\n\n\
         [pipeline]\nname = \"chain-{n}\"\n\n[stages]\n"
    );
    for i in 0..n {
        if i == 0 {
            out.push_str("s0 = { run = \"true\" }\n");
        } else {
            let _ = writeln!(out, "s{i} = {{ run = \"true\", needs = [\"s{}\"] }}", i - 1);
        }
    }
    out
}
