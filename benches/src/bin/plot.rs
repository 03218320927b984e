//! `plot SPEC.json OUT.svg`: draws one chart described in JSON, for the
//! bench scripts whose reports are written in Python or shell
//! (`scripts/bench-cluster.sh`). The spec is `benches::plot::Chart`:
//!
//! ```json
//! {"kind": "bars", "title": "…", "value_label": "MiB/s",
//!  "groups": ["seqwrite", "seqread"],
//!  "series": [{"name": "r3", "values": [410.0, null]}],
//!  "log": false, "reference": null}
//! {"kind": "panels", "title": "…", "x_label": "threads",
//!  "panels": [{"title": "…", "y_label": "ops/s",
//!              "lines": [{"name": "r3", "points": [[1, 100.0], [4, 310.0]]}]}]}
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use benches::plot::Chart;

/// Draws one chart described in JSON (SPEC, or - for standard input) as an
/// SVG file: grouped horizontal bars or small multiples of lines (see the
/// binary's source for the format).
#[derive(Debug, clap::Parser)]
#[command(name = "plot")]
struct Args {
    /// The chart's JSON description, or - for standard input.
    spec: PathBuf,
    /// The SVG file to write (its directory is created).
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let text = if args.spec.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the spec from standard input")?
    } else {
        std::fs::read_to_string(&args.spec).with_context(|| format!("reading {}", args.spec.display()))?
    };
    let chart: Chart = serde_json::from_str(&text).context("parsing the chart's JSON")?;
    benches::plot::write(&args.out, &chart.svg()?)
}
