//! `--config FILE`: options from a TOML file, for nodes deployed by configuration management.
//!
//! Each key names an environment variable without its `SHOAL_` prefix (`model`, `threads`,
//! `memory`, `peers`, `no_mdns`...). The file only fills variables that are not already set,
//! so the order of precedence is: command line, then environment, then file, then defaults.

use std::path::Path;

use anyhow::{bail, Context};

/// Reads `path` and exports its keys as `SHOAL_*` environment variables that are unset.
/// Call before parsing the command line and before any thread starts.
pub(crate) fn apply(path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for (name, value) in variables(&text).with_context(|| format!("in {}", path.display()))? {
        if std::env::var_os(&name).is_none() {
            std::env::set_var(name, value);
        }
    }
    Ok(())
}

/// The `(SHOAL_KEY, value)` pairs of a config file.
fn variables(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let table: toml::Table = text.parse()?;
    let mut out = Vec::new();
    for (key, value) in table {
        let name = format!("SHOAL_{}", key.to_ascii_uppercase().replace('-', "_"));
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => bail!(
                        "{key}: list items must be strings, got {}",
                        other.type_str()
                    ),
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            other => bail!("{key}: unsupported value of type {}", other.type_str()),
        };
        out.push((name, value));
    }
    Ok(out)
}

/// The config file named by `--config FILE`, `--config=FILE` or `SHOAL_CONFIG`, if any.
pub(crate) fn requested() -> Option<std::path::PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(Into::into);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(path.into());
        }
    }
    std::env::var_os("SHOAL_CONFIG").map(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_variables_and_lists_join() {
        let vars = variables(
            "model = \"/models/m.gguf\"\nthreads = 2\nno_mdns = true\npeers = [\"/ip4/10.0.0.2/tcp/7600\", \"/ip4/10.0.0.3/tcp/7600\"]\n",
        )
        .unwrap();
        assert!(vars.contains(&("SHOAL_MODEL".into(), "/models/m.gguf".into())));
        assert!(vars.contains(&("SHOAL_THREADS".into(), "2".into())));
        assert!(vars.contains(&("SHOAL_NO_MDNS".into(), "true".into())));
        assert!(vars.contains(&(
            "SHOAL_PEERS".into(),
            "/ip4/10.0.0.2/tcp/7600,/ip4/10.0.0.3/tcp/7600".into()
        )));
    }

    #[test]
    fn nested_tables_and_bad_syntax_are_errors() {
        assert!(variables("[section]\na = 1\n").is_err());
        assert!(variables("threads = \n").is_err());
        assert!(variables("peers = [1, 2]\n").is_err());
    }
}
