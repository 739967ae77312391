//! `edge-agent featurize`: a recording (CSV) to features (CSV), with the exact code the
//! running agent uses — the training-serving parity contract.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use edge_wire::bundle::FeatureSpec;

use crate::features::{model_input, offline::featurize_csv, WindowStats};

/// The feature spec of a bundle (structure and hashes checked; the signature is not needed to
/// compute features) or of a pack/spec TOML file.
pub fn load_spec(bundle: Option<&Path>, spec: Option<&Path>) -> anyhow::Result<FeatureSpec> {
    match (bundle, spec) {
        (Some(b), None) => {
            let bytes = std::fs::read(b).with_context(|| format!("reading {}", b.display()))?;
            Ok(edge_wire::bundle::file::parse(&bytes)?.manifest.features)
        }
        (None, Some(s)) => {
            let text =
                std::fs::read_to_string(s).with_context(|| format!("reading {}", s.display()))?;
            let p: super::bundle::PackSpec =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", s.display()))?;
            Ok(p.spec)
        }
        _ => anyhow::bail!("give exactly one of --bundle or --spec"),
    }
}

/// Writes `start_ns,end_ns,<columns...>`; `scaled` writes the model input instead of raw
/// features. Floats use the shortest round-trip form (bit-exact when read back).
pub fn featurize(
    spec: &FeatureSpec,
    input: &Path,
    output: Option<&Path>,
    scaled: bool,
) -> anyhow::Result<WindowStats> {
    let f = std::fs::File::open(input).with_context(|| format!("reading {}", input.display()))?;
    let out: Box<dyn Write> = match output {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    let mut out = BufWriter::new(out);
    let mut header = String::from("start_ns,end_ns");
    let names = if scaled && spec.layout != edge_wire::bundle::InputLayout::Vector {
        (0..spec.input_len()).map(|i| format!("x{i}")).collect()
    } else if spec.layout == edge_wire::bundle::InputLayout::Vector {
        spec.column_names()
    } else {
        spec.tags
            .iter()
            .flat_map(|t| (0..spec.window_len()).map(move |i| format!("{t}[{i}]")))
            .collect()
    };
    for n in names {
        header.push(',');
        header.push_str(&n);
    }
    writeln!(out, "{header}")?;
    let mut line = String::new();
    let stats = featurize_csv(
        spec,
        std::io::BufReader::new(f),
        &input.display().to_string(),
        |row| {
            use std::fmt::Write as _;
            line.clear();
            let _ = write!(line, "{},{}", row.start_ns, row.end_ns);
            if scaled {
                for v in model_input(spec, row) {
                    let _ = write!(line, ",{v:?}");
                }
            } else {
                for v in &row.values {
                    let _ = write!(line, ",{v:?}");
                }
            }
            writeln!(out, "{line}")
        },
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    out.flush()?;
    Ok(stats)
}
