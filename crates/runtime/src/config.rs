//! Configuration from environment variables and an optional file.
//!
//! Every key a service reads is a named constant, and parsing takes a
//! [`Source`] so tests feed a map instead of the process environment. The
//! process environment wins over the file named by [`CONFIG_FILE`].

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

/// Optional file of `KEY=VALUE` lines (`#` comments, blank lines allowed)
/// read before the environment; the environment wins.
pub const CONFIG_FILE: &str = "DEALMESH_CONFIG_FILE";

/// A configuration error names the key and what is wrong with its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Where configuration values come from.
pub trait Source {
    fn get(&self, key: &str) -> Option<String>;
    /// Every `(key, value)` whose key starts with `prefix`, sorted by key.
    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)>;
}

/// A fixed map of values: what tests use, and what [`Layered`] is built of.
#[derive(Debug, Clone, Default)]
pub struct MapSource(pub BTreeMap<String, String>);

impl MapSource {
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Parses `KEY=VALUE` lines. Values may be wrapped in single or double
    /// quotes; nothing is interpolated.
    pub fn parse_env_file(text: &str, file_name: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(ConfigError::new(
                    CONFIG_FILE,
                    format!("{file_name} line {}: expected KEY=VALUE", index + 1),
                ));
            };
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            map.insert(key.trim().to_owned(), value.to_owned());
        }
        Ok(Self(map))
    }
}

impl Source for MapSource {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.0
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The process environment layered over the optional [`CONFIG_FILE`].
pub fn from_environment() -> Result<MapSource> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let mut merged = match env.get(CONFIG_FILE) {
        Some(path) if !path.is_empty() => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(CONFIG_FILE, format!("cannot read {path}: {e}")))?;
            MapSource::parse_env_file(&text, path)?.0
        }
        _ => BTreeMap::new(),
    };
    merged.extend(env);
    Ok(MapSource(merged))
}

/// Typed reads over a [`Source`], each error naming its key.
pub struct Reader<'a> {
    source: &'a dyn Source,
}

impl<'a> Reader<'a> {
    pub fn new(source: &'a dyn Source) -> Self {
        Self { source }
    }

    /// The raw value, with empty strings treated as unset.
    pub fn raw(&self, key: &str) -> Option<String> {
        self.source.get(key).filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    pub fn optional_string(&self, key: &str) -> Option<String> {
        self.raw(key)
    }

    pub fn required_string(&self, key: &str) -> Result<String> {
        self.raw(key)
            .ok_or_else(|| ConfigError::new(key, "is required"))
    }

    pub fn secret(&self, key: &str) -> Option<SecretString> {
        self.raw(key).map(SecretString::from)
    }

    pub fn parse<T>(&self, key: &str, default: T) -> Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|e| ConfigError::new(key, format!("invalid value {v:?}: {e}"))),
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.raw(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::new(
                    key,
                    format!("invalid value {v:?}: expected true or false"),
                )),
            },
        }
    }

    /// A duration such as `250ms`, `30s`, `5m`, `1h`; a bare number is seconds.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|message| ConfigError::new(key, message)),
        }
    }

    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.source.with_prefix(prefix)
    }
}

/// `url` with its password replaced by `REDACTED`, for logs and printed
/// configuration. Something that does not parse as a URL is hidden whole.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "[unparseable, hidden]".to_owned(),
    }
}

/// A duration such as `250ms`, `30s`, `5m`, `1h`, `7d`; a bare number is
/// seconds. The error says what was expected.
pub fn parse_duration(value: &str) -> std::result::Result<Duration, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {value:?}: expected e.g. 500ms, 30s, 5m, 1h, 7d"))?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        other => return Err(format!("invalid duration unit {other:?} in {value:?}")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_parses_quotes_comments_and_export() {
        let src =
            MapSource::parse_env_file("# comment\nA=1\nexport B=\"two words\"\n\nC='x=y'\n", "f")
                .unwrap();
        assert_eq!(src.get("A").as_deref(), Some("1"));
        assert_eq!(src.get("B").as_deref(), Some("two words"));
        assert_eq!(src.get("C").as_deref(), Some("x=y"));
    }

    #[test]
    fn env_file_rejects_a_line_without_equals_naming_the_line() {
        let err = MapSource::parse_env_file("A=1\noops\n", "stack.env").unwrap_err();
        assert_eq!(err.key, CONFIG_FILE);
        assert!(err.message.contains("stack.env line 2"), "{err}");
    }

    #[test]
    fn typed_reads_name_the_key_on_error() {
        let src = MapSource::new([("N", "abc"), ("B", "maybe"), ("D", "5x")]);
        let r = Reader::new(&src);
        assert_eq!(r.parse::<u32>("N", 1).unwrap_err().key, "N");
        assert_eq!(r.bool("B", false).unwrap_err().key, "B");
        assert_eq!(r.duration("D", Duration::ZERO).unwrap_err().key, "D");
        assert_eq!(r.parse::<u32>("MISSING", 7).unwrap(), 7);
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn prefix_lists_only_matching_keys() {
        let src = MapSource::new([
            ("KAFKA_A", "1"),
            ("KAFKA_B", "2"),
            ("KAFKAX", "3"),
            ("Z", "4"),
        ]);
        let keys: Vec<_> = src
            .with_prefix("KAFKA_")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["KAFKA_A", "KAFKA_B"]);
    }
}
