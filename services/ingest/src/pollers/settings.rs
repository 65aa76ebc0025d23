//! The pollers' configuration, read from the keys in [`crate::config`].

use std::fmt;
use std::time::Duration;

use dealmesh_runtime::config::{ConfigError, Reader};
use secrecy::SecretString;
use url::Url;

use crate::config::{
    CRUNCHBASE_API_URL, CRUNCHBASE_CALLS_PER_MINUTE, CRUNCHBASE_ENABLED, CRUNCHBASE_INTERVAL,
    CRUNCHBASE_MAX_PAGES, CRUNCHBASE_SEARCHES, CRUNCHBASE_SEARCHES_FILE, CRUNCHBASE_USER_KEY,
    GITHUB_API_URL, GITHUB_ENABLED, GITHUB_INTERVAL, GITHUB_MAX_PAGES, GITHUB_PER_PAGE,
    GITHUB_SEARCHES, GITHUB_SORT, GITHUB_TOKEN, POLLER_HTTP_TIMEOUT, POLLER_MAX_ATTEMPTS,
};

pub const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";
pub const DEFAULT_CRUNCHBASE_API_URL: &str = "https://api.crunchbase.com";
/// Under Crunchbase's documented 200 calls a minute, with room for other
/// clients of the same key.
pub const DEFAULT_CRUNCHBASE_CALLS_PER_MINUTE: u32 = 180;
pub const CRUNCHBASE_DOCUMENTED_LIMIT: u32 = 200;

/// How provider requests are made and retried.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub timeout: Duration,
    pub max_attempts: u32,
}

#[derive(Clone)]
pub struct GithubSettings {
    pub enabled: bool,
    pub api_url: Url,
    pub token: Option<SecretString>,
    pub searches: Vec<String>,
    /// GitHub's `sort` parameter; `None` for best match.
    pub sort: Option<String>,
    pub interval: Duration,
    pub per_page: u32,
    pub max_pages: u32,
}

/// One saved Crunchbase organization search.
#[derive(Debug, Clone, PartialEq)]
pub struct CrunchbaseSearch {
    pub name: String,
    /// The request body without `after_id`.
    pub body: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone)]
pub struct CrunchbaseSettings {
    pub enabled: bool,
    pub api_url: Url,
    pub user_key: Option<SecretString>,
    pub searches: Vec<CrunchbaseSearch>,
    pub calls_per_minute: u32,
    pub interval: Duration,
    pub max_pages: u32,
}

impl HttpSettings {
    pub fn from_reader(r: &Reader<'_>) -> Result<Self, ConfigError> {
        let max_attempts: u32 = r.parse(POLLER_MAX_ATTEMPTS, 5)?;
        if !(1..=20).contains(&max_attempts) {
            return Err(ConfigError::new(POLLER_MAX_ATTEMPTS, "must be 1 to 20"));
        }
        let timeout = r.duration(POLLER_HTTP_TIMEOUT, Duration::from_secs(30))?;
        if timeout.is_zero() {
            return Err(ConfigError::new(POLLER_HTTP_TIMEOUT, "must be positive"));
        }
        Ok(Self {
            timeout,
            max_attempts,
        })
    }
}

impl GithubSettings {
    pub fn from_reader(r: &Reader<'_>) -> Result<Self, ConfigError> {
        let enabled = r.bool(GITHUB_ENABLED, false)?;
        let searches: Vec<String> = r
            .optional_string(GITHUB_SEARCHES)
            .unwrap_or_default()
            .split(';')
            .map(|q| q.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|q| !q.is_empty())
            .collect();
        if enabled && searches.is_empty() {
            return Err(ConfigError::new(
                GITHUB_SEARCHES,
                format!("is required when {GITHUB_ENABLED} is true"),
            ));
        }
        for (index, query) in searches.iter().enumerate() {
            if searches[..index].contains(query) {
                return Err(ConfigError::new(
                    GITHUB_SEARCHES,
                    format!("query {query:?} is listed twice"),
                ));
            }
            // GitHub's own limit on the `q` parameter.
            if query.chars().count() > 256 {
                return Err(ConfigError::new(
                    GITHUB_SEARCHES,
                    format!("query {query:?} is longer than 256 characters"),
                ));
            }
        }
        let sort = match r.string(GITHUB_SORT, "updated").trim() {
            "best-match" => None,
            sort @ ("updated" | "stars" | "forks" | "help-wanted-issues") => Some(sort.to_owned()),
            other => {
                return Err(ConfigError::new(
                    GITHUB_SORT,
                    format!(
                        "invalid value {other:?}: expected updated, stars, forks, \
                         help-wanted-issues or best-match"
                    ),
                ));
            }
        };
        let per_page: u32 = r.parse(GITHUB_PER_PAGE, 100)?;
        if !(1..=100).contains(&per_page) {
            return Err(ConfigError::new(GITHUB_PER_PAGE, "must be 1 to 100"));
        }
        let max_pages: u32 = r.parse(GITHUB_MAX_PAGES, 10)?;
        if max_pages == 0 {
            return Err(ConfigError::new(GITHUB_MAX_PAGES, "must be at least 1"));
        }
        Ok(Self {
            enabled,
            api_url: base_url(r, GITHUB_API_URL, DEFAULT_GITHUB_API_URL)?,
            token: r.secret(GITHUB_TOKEN),
            searches,
            sort,
            interval: interval(r, GITHUB_INTERVAL, Duration::from_secs(15 * 60))?,
            per_page,
            max_pages,
        })
    }
}

impl CrunchbaseSettings {
    pub fn from_reader(r: &Reader<'_>) -> Result<Self, ConfigError> {
        let enabled = r.bool(CRUNCHBASE_ENABLED, false)?;
        let mut searches = Vec::new();
        if let Some(inline) = r.optional_string(CRUNCHBASE_SEARCHES) {
            searches.extend(parse_searches(CRUNCHBASE_SEARCHES, &inline)?);
        }
        if let Some(path) = r.optional_string(CRUNCHBASE_SEARCHES_FILE) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(CRUNCHBASE_SEARCHES_FILE, format!("cannot read {path}: {e}"))
            })?;
            for search in parse_searches(CRUNCHBASE_SEARCHES_FILE, &text)? {
                if searches
                    .iter()
                    .any(|s: &CrunchbaseSearch| s.name == search.name)
                {
                    return Err(ConfigError::new(
                        CRUNCHBASE_SEARCHES_FILE,
                        format!("search {:?} is also in {CRUNCHBASE_SEARCHES}", search.name),
                    ));
                }
                searches.push(search);
            }
        }
        let user_key = r.secret(CRUNCHBASE_USER_KEY);
        if enabled && searches.is_empty() {
            return Err(ConfigError::new(
                CRUNCHBASE_SEARCHES,
                format!("is required when {CRUNCHBASE_ENABLED} is true"),
            ));
        }
        if enabled && user_key.is_none() {
            return Err(ConfigError::new(
                CRUNCHBASE_USER_KEY,
                format!("is required when {CRUNCHBASE_ENABLED} is true"),
            ));
        }
        let calls_per_minute: u32 = r.parse(
            CRUNCHBASE_CALLS_PER_MINUTE,
            DEFAULT_CRUNCHBASE_CALLS_PER_MINUTE,
        )?;
        if !(1..=CRUNCHBASE_DOCUMENTED_LIMIT).contains(&calls_per_minute) {
            return Err(ConfigError::new(
                CRUNCHBASE_CALLS_PER_MINUTE,
                format!("must be 1 to {CRUNCHBASE_DOCUMENTED_LIMIT} (the documented limit)"),
            ));
        }
        let max_pages: u32 = r.parse(CRUNCHBASE_MAX_PAGES, 20)?;
        if max_pages == 0 {
            return Err(ConfigError::new(CRUNCHBASE_MAX_PAGES, "must be at least 1"));
        }
        Ok(Self {
            enabled,
            api_url: base_url(r, CRUNCHBASE_API_URL, DEFAULT_CRUNCHBASE_API_URL)?,
            user_key,
            searches,
            calls_per_minute,
            interval: interval(r, CRUNCHBASE_INTERVAL, Duration::from_secs(3600))?,
            max_pages,
        })
    }
}

/// `{"name": {search body}, ...}`; each body must be an object, and
/// `after_id` is the poller's to set.
fn parse_searches(key: &str, text: &str) -> Result<Vec<CrunchbaseSearch>, ConfigError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        ConfigError::new(
            key,
            format!("not JSON ({e}); expected an object of search name to request body"),
        )
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(ConfigError::new(
            key,
            "expected a JSON object of search name to request body",
        ));
    };
    let mut searches = Vec::new();
    for (name, body) in map {
        if name.trim().is_empty() {
            return Err(ConfigError::new(key, "a search name is empty"));
        }
        let serde_json::Value::Object(body) = body else {
            return Err(ConfigError::new(
                key,
                format!("search {name:?}: the request body must be a JSON object"),
            ));
        };
        if body.contains_key("after_id") {
            return Err(ConfigError::new(
                key,
                format!("search {name:?}: after_id is set by the poller, remove it"),
            ));
        }
        if let Some(limit) = body.get("limit")
            && !limit.as_u64().is_some_and(|l| (1..=1000).contains(&l))
        {
            return Err(ConfigError::new(
                key,
                format!("search {name:?}: limit must be a number from 1 to 1000"),
            ));
        }
        searches.push(CrunchbaseSearch { name, body });
    }
    Ok(searches)
}

fn base_url(r: &Reader<'_>, key: &str, default: &str) -> Result<Url, ConfigError> {
    let raw = r.string(key, default);
    let url = Url::parse(raw.trim())
        .map_err(|e| ConfigError::new(key, format!("invalid URL {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::new(key, "must be an http or https URL"));
    }
    Ok(url)
}

fn interval(r: &Reader<'_>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    let d = r.duration(key, default)?;
    if d < Duration::from_secs(1) {
        return Err(ConfigError::new(key, "must be at least 1s"));
    }
    Ok(d)
}

/// Shows which secrets are set, never their value.
fn secret_state(secret: &Option<SecretString>) -> &'static str {
    if secret.is_some() { "[set]" } else { "[unset]" }
}

impl fmt::Debug for GithubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubSettings")
            .field("enabled", &self.enabled)
            .field("api_url", &self.api_url.as_str())
            .field("token", &secret_state(&self.token))
            .field("searches", &self.searches)
            .field("sort", &self.sort.as_deref().unwrap_or("best-match"))
            .field("interval", &self.interval)
            .field("per_page", &self.per_page)
            .field("max_pages", &self.max_pages)
            .finish()
    }
}

impl fmt::Debug for CrunchbaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrunchbaseSettings")
            .field("enabled", &self.enabled)
            .field("api_url", &self.api_url.as_str())
            .field("user_key", &secret_state(&self.user_key))
            .field(
                "searches",
                &self.searches.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("calls_per_minute", &self.calls_per_minute)
            .field("interval", &self.interval)
            .field("max_pages", &self.max_pages)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dealmesh_runtime::config::MapSource;

    fn read<T>(
        pairs: &[(&str, &str)],
        f: impl Fn(&Reader<'_>) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        let source = MapSource::new(pairs.iter().copied());
        f(&Reader::new(&source))
    }

    #[test]
    fn github_searches_split_on_semicolons() {
        let s = read(
            &[
                (GITHUB_ENABLED, "true"),
                (GITHUB_SEARCHES, " topic:llm  stars:>500 ; ;language:rust "),
            ],
            GithubSettings::from_reader,
        )
        .unwrap();
        assert_eq!(s.searches, ["topic:llm stars:>500", "language:rust"]);
        assert_eq!(s.sort.as_deref(), Some("updated"));
        let e = read(&[(GITHUB_SORT, "newest")], GithubSettings::from_reader).unwrap_err();
        assert_eq!(e.key, GITHUB_SORT);
        assert_eq!(s.api_url.as_str(), "https://api.github.com/");
    }

    #[test]
    fn a_query_listed_twice_is_refused() {
        let e = read(
            &[(GITHUB_SEARCHES, "topic:llm;topic:rust; topic:llm ")],
            GithubSettings::from_reader,
        )
        .unwrap_err();
        assert_eq!(e.key, GITHUB_SEARCHES);
        assert!(e.to_string().contains("listed twice"), "{e}");
    }

    #[test]
    fn enabled_without_searches_names_the_key() {
        let e = read(&[(GITHUB_ENABLED, "true")], GithubSettings::from_reader).unwrap_err();
        assert_eq!(e.key, GITHUB_SEARCHES);
        let e = read(
            &[
                (CRUNCHBASE_ENABLED, "true"),
                (CRUNCHBASE_SEARCHES, r#"{"seed": {"limit": 50}}"#),
            ],
            CrunchbaseSettings::from_reader,
        )
        .unwrap_err();
        assert_eq!(e.key, CRUNCHBASE_USER_KEY);
    }

    #[test]
    fn crunchbase_rate_above_the_documented_limit_is_refused() {
        let e = read(
            &[(CRUNCHBASE_CALLS_PER_MINUTE, "250")],
            CrunchbaseSettings::from_reader,
        )
        .unwrap_err();
        assert_eq!(e.key, CRUNCHBASE_CALLS_PER_MINUTE);
    }

    #[test]
    fn crunchbase_searches_are_validated() {
        for bad in [
            "not json",
            "[1,2]",
            r#"{"x": 3}"#,
            r#"{"x": {"after_id": "u"}}"#,
            r#"{"x": {"limit": 0}}"#,
        ] {
            let e = read(
                &[(CRUNCHBASE_SEARCHES, bad)],
                CrunchbaseSettings::from_reader,
            )
            .unwrap_err();
            assert_eq!(e.key, CRUNCHBASE_SEARCHES, "{bad}");
        }
        let ok = read(
            &[(
                CRUNCHBASE_SEARCHES,
                r#"{"seed-eu": {"field_ids": ["identifier"], "limit": 2}}"#,
            )],
            CrunchbaseSettings::from_reader,
        )
        .unwrap();
        assert_eq!(ok.searches[0].name, "seed-eu");
    }

    #[test]
    fn crunchbase_searches_from_a_file_join_the_inline_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("searches.json");
        std::fs::write(&file, r#"{"series-a-us": {"limit": 100}}"#).unwrap();
        let path = file.to_str().unwrap();
        let both = read(
            &[
                (CRUNCHBASE_SEARCHES, r#"{"seed-eu": {}}"#),
                (CRUNCHBASE_SEARCHES_FILE, path),
            ],
            CrunchbaseSettings::from_reader,
        )
        .unwrap();
        let names: Vec<&str> = both.searches.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["seed-eu", "series-a-us"]);

        let clash = read(
            &[
                (CRUNCHBASE_SEARCHES, r#"{"series-a-us": {}}"#),
                (CRUNCHBASE_SEARCHES_FILE, path),
            ],
            CrunchbaseSettings::from_reader,
        )
        .unwrap_err();
        assert_eq!(clash.key, CRUNCHBASE_SEARCHES_FILE);
        let missing = read(
            &[(CRUNCHBASE_SEARCHES_FILE, "/nonexistent/searches.json")],
            CrunchbaseSettings::from_reader,
        )
        .unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    #[test]
    fn secrets_are_redacted() {
        let g = read(
            &[(GITHUB_TOKEN, "ghp_supersecret")],
            GithubSettings::from_reader,
        )
        .unwrap();
        let c = read(
            &[(CRUNCHBASE_USER_KEY, "cb-supersecret")],
            CrunchbaseSettings::from_reader,
        )
        .unwrap();
        let printed = format!("{g:?} {c:?}");
        assert!(!printed.contains("supersecret"), "{printed}");
        assert!(printed.contains("[set]"), "{printed}");
    }
}
