//! Where settings come from (the process environment, or a map in tests)
//! and the parsers that name the variable to fix.

use std::str::FromStr;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value} is not valid: {reason}")]
pub struct ConfigError {
    /// The environment variable to fix.
    pub variable: String,
    /// The value as given, or `<redacted>` for secrets.
    pub value: String,
    /// What a valid value looks like.
    pub reason: String,
}

impl ConfigError {
    /// `variable`'s `value` (quoted in the message) is not valid: `reason`.
    pub fn invalid(variable: &str, value: &str, reason: &str) -> Self {
        Self {
            variable: variable.to_owned(),
            value: format!("{value:?}"),
            reason: reason.to_owned(),
        }
    }
}

/// Where configuration values come from: the process environment in
/// production, a map in tests.
pub trait Source {
    /// The value of `name`, if set. An empty value counts as unset.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment. A variable that is unset may be given as a
/// file instead, Docker's and Kubernetes' way with secrets: `<NAME>_FILE`
/// names a file whose contents (without the final newline) are the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        if let Some(value) = std::env::var(name).ok().filter(|value| !value.is_empty()) {
            return Some(value);
        }
        let path = std::env::var(format!("{name}_FILE"))
            .ok()
            .filter(|path| !path.is_empty())?;
        match std::fs::read_to_string(&path) {
            Ok(value) => Some(value.trim_end_matches(['\r', '\n']).to_owned()).filter(|value| !value.is_empty()),
            Err(err) => {
                // Said before logging is set up, and the value is then unset.
                eprintln!("{name}_FILE={path}: cannot read the file ({err}); {name} is unset");
                None
            }
        }
    }
}

impl<F: Fn(&str) -> Option<String>> Source for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name).filter(|value| !value.is_empty())
    }
}

/// The value of `variable` parsed as `T`, or `default` when unset; an
/// error naming the variable and what a valid value looks like otherwise.
pub fn parse_or<T: FromStr>(source: &dyn Source, variable: &str, default: T, expected: &str) -> Result<T, ConfigError> {
    match source.get(variable) {
        None => Ok(default),
        Some(raw) => raw.trim().parse().map_err(|_| ConfigError {
            variable: variable.to_owned(),
            value: format!("{raw:?}"),
            reason: expected.to_owned(),
        }),
    }
}

/// A positive whole number (its type bounds it), or `default` when unset.
pub fn positive<T: FromStr + PartialOrd + Default>(
    source: &dyn Source,
    variable: &str,
    default: T,
) -> Result<T, ConfigError> {
    let value = parse_or(source, variable, default, "expected a positive whole number")?;
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            variable,
            &source.get(variable).unwrap_or_default(),
            "expected a positive whole number",
        ))
    }
}

/// true/1/yes/on or false/0/no/off, or `default` when unset.
pub fn parse_bool(source: &dyn Source, variable: &str, default: bool) -> Result<bool, ConfigError> {
    match source.get(variable).map(|raw| raw.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Some(v) => Err(ConfigError::invalid(variable, &v, "expected true or false")),
    }
}

/// Networks (comma-separated CIDRs such as `10.20.0.0/16`), none when unset.
pub fn networks(source: &dyn Source, variable: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let Some(value) = source.get(variable) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|net| !net.is_empty())
        .map(|net| {
            net.parse().map_err(|_| {
                ConfigError::invalid(
                    variable,
                    &value,
                    "expected networks such as 10.20.0.0/16, comma-separated",
                )
            })
        })
        .collect()
}

/// Absolute paths separated by ':', none when unset.
pub fn paths(source: &dyn Source, variable: &str) -> Result<Vec<std::path::PathBuf>, ConfigError> {
    let Some(value) = source.get(variable) else {
        return Ok(Vec::new());
    };
    value
        .split(':')
        .filter(|path| !path.is_empty())
        .map(|path| {
            let path = std::path::PathBuf::from(path);
            if path.is_absolute() {
                Ok(path)
            } else {
                Err(ConfigError::invalid(
                    variable,
                    &value,
                    "expected absolute paths separated by ':'",
                ))
            }
        })
        .collect()
}
