//! GitHub REST API: a repository (stars, forks, contributors, weekly
//! commits, star velocity from timestamped stargazers) or an organization
//! (its profile and its public repositories taken together).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dealmesh_proto::v1::GithubSignals;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::instrument;
use url::Url;

use super::{Fetched, endpoint, gap, provenance, timestamp};
use crate::provider::{Answer, CallError, Provider, backoff};

pub const SOURCE: &str = "github";
const API_VERSION: &str = "2022-11-28";
/// Stargazer pages (100 each) read backwards from the newest for velocity.
const MAX_STARGAZER_PAGES: u32 = 10;
const VELOCITY_DAYS: i64 = 30;

/// What to look up: a repository if the deal names one, else its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Repo { owner: String, repo: String },
    Org { owner: String },
}

impl Target {
    /// The target of a sourced deal, or why there is none.
    pub fn of(owner: &str, repo: &str) -> Result<Option<Target>, String> {
        let (owner, repo) = (owner.trim(), repo.trim());
        if owner.is_empty() {
            return Ok(None);
        }
        if !is_name(owner) {
            return Err(format!("invalid GitHub owner {owner:?}"));
        }
        if repo.is_empty() {
            return Ok(Some(Target::Org {
                owner: owner.to_owned(),
            }));
        }
        if !is_name(repo) {
            return Err(format!("invalid GitHub repository {repo:?}"));
        }
        Ok(Some(Target::Repo {
            owner: owner.to_owned(),
            repo: repo.to_owned(),
        }))
    }
}

/// GitHub owner and repository names: ASCII letters, digits, `-`, `_`, `.`.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub struct GithubClient {
    provider: Arc<Provider>,
    base: Url,
    token: Option<SecretString>,
}

#[derive(Deserialize)]
struct RepoBody {
    #[serde(default)]
    stargazers_count: i64,
    #[serde(default)]
    forks_count: i64,
    #[serde(default)]
    open_issues_count: i64,
    language: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    license: Option<LicenseBody>,
    created_at: Option<String>,
    pushed_at: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct LicenseBody {
    spdx_id: Option<String>,
}

#[derive(Deserialize)]
struct OrgBody {
    description: Option<String>,
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct UserBody {
    bio: Option<String>,
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct WeekBody {
    total: i64,
}

#[derive(Deserialize)]
struct StarBody {
    starred_at: Option<String>,
}

impl GithubClient {
    pub fn new(provider: Arc<Provider>, base: Url, token: Option<SecretString>) -> Self {
        Self {
            provider,
            base,
            token,
        }
    }

    async fn get(&self, url: &Url, accept: &'static str) -> Result<Answer, CallError> {
        let key = format!("{accept} {url}");
        self.provider
            .call(Some(&key), || {
                let mut request = self
                    .provider
                    .client()
                    .get(url.clone())
                    .header(ACCEPT, accept)
                    .header("X-GitHub-Api-Version", API_VERSION);
                if let Some(token) = &self.token
                    && let Ok(value) =
                        HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                {
                    request = request.header(AUTHORIZATION, value);
                }
                request
            })
            .await
    }

    /// Signals for `target`; a repository or organization GitHub does not
    /// know is a gap.
    #[instrument(skip_all, fields(target = ?target))]
    pub async fn fetch(&self, target: &Target) -> Result<Fetched<GithubSignals>, CallError> {
        let result = match target {
            Target::Repo { owner, repo } => self.repo(owner, repo).await,
            Target::Org { owner } => self.org(owner).await,
        };
        match result {
            Err(CallError::NotFound { url, .. }) => {
                Ok(Fetched::gap(SOURCE, format!("not found: {url}")))
            }
            other => other,
        }
    }

    async fn repo(&self, owner: &str, repo: &str) -> Result<Fetched<GithubSignals>, CallError> {
        let url = endpoint(&self.base, &["repos", owner, repo]);
        let fetched_at = Utc::now();
        let body: RepoBody = self
            .get(&url, "application/vnd.github+json")
            .await?
            .json(SOURCE, "repository")?;
        let (contributors, weekly_commits, star_velocity) = tokio::join!(
            self.contributors(owner, repo),
            self.commit_activity(owner, repo),
            self.star_velocity(owner, repo, fetched_at),
        );
        let mut gaps = Vec::new();
        let contributors = optional(contributors, "contributors", &mut gaps)?.unwrap_or(0);
        let weekly_commits = optional(weekly_commits, "commit activity", &mut gaps)?
            .flatten()
            .unwrap_or_else(|| {
                gaps.push(gap(
                    SOURCE,
                    "commit activity: still being computed by GitHub",
                ));
                Vec::new()
            });
        let star_velocity_30d = optional(star_velocity, "stargazers", &mut gaps)?.unwrap_or(0.0);
        Ok(Fetched {
            signals: Some(GithubSignals {
                provenance: Some(provenance(SOURCE, fetched_at, url.as_str())),
                owner: owner.to_owned(),
                repo: repo.to_owned(),
                stars: body.stargazers_count.max(0),
                forks: body.forks_count.max(0),
                contributors,
                open_issues: body.open_issues_count.max(0),
                weekly_commits,
                star_velocity_30d,
                primary_language: body.language.unwrap_or_default(),
                topics: body.topics,
                license: body
                    .license
                    .and_then(|l| l.spdx_id)
                    .filter(|id| id != "NOASSERTION")
                    .unwrap_or_default(),
                created_at: timestamp(body.created_at.as_deref()),
                pushed_at: timestamp(body.pushed_at.as_deref()),
                description: body.description.unwrap_or_default(),
            }),
            gaps,
        })
    }

    /// Contributors (anonymous ones too), counted from the last page of a
    /// one-per-page listing rather than by reading them all.
    async fn contributors(&self, owner: &str, repo: &str) -> Result<i64, CallError> {
        let mut url = endpoint(&self.base, &["repos", owner, repo, "contributors"]);
        url.query_pairs_mut()
            .append_pair("per_page", "1")
            .append_pair("anon", "1");
        let answer = self.get(&url, "application/vnd.github+json").await?;
        if answer.status == reqwest::StatusCode::NO_CONTENT || answer.body.is_empty() {
            return Ok(0);
        }
        if let Some(last) = answer.header("link").and_then(|l| link_page(l, "last")) {
            return Ok(i64::from(last));
        }
        let listed: Vec<serde_json::Value> = answer.json(SOURCE, "contributors")?;
        Ok(listed.len() as i64)
    }

    /// Commits per week over the last year, or `None` while GitHub is still
    /// computing them (it answers 202 until the statistics are ready).
    async fn commit_activity(
        &self,
        owner: &str,
        repo: &str,
    ) -> Result<Option<Vec<i64>>, CallError> {
        let url = endpoint(
            &self.base,
            &["repos", owner, repo, "stats", "commit_activity"],
        );
        let policy = self.provider.retry_policy();
        for attempt in 1..=policy.attempts {
            let answer = self.get(&url, "application/vnd.github+json").await?;
            match answer.status {
                reqwest::StatusCode::ACCEPTED => {
                    if attempt < policy.attempts {
                        tokio::time::sleep(backoff(policy, attempt)).await;
                    }
                }
                reqwest::StatusCode::NO_CONTENT => return Ok(Some(Vec::new())),
                _ => {
                    let weeks: Vec<WeekBody> = answer.json(SOURCE, "commit activity")?;
                    return Ok(Some(weeks.into_iter().map(|w| w.total.max(0)).collect()));
                }
            }
        }
        Ok(None)
    }

    /// Stars gained per day over the last 30 days, from the newest pages of
    /// timestamped stargazers.
    async fn star_velocity(
        &self,
        owner: &str,
        repo: &str,
        now: DateTime<Utc>,
    ) -> Result<f64, CallError> {
        const STAR_JSON: &str = "application/vnd.github.star+json";
        let page_url = |page: u32| {
            let mut url = endpoint(&self.base, &["repos", owner, repo, "stargazers"]);
            url.query_pairs_mut()
                .append_pair("per_page", "100")
                .append_pair("page", &page.to_string());
            url
        };
        let since = now - chrono::Duration::days(VELOCITY_DAYS);
        let first = self.get(&page_url(1), STAR_JSON).await?;
        let last = first
            .header("link")
            .and_then(|l| link_page(l, "last"))
            .unwrap_or(1);
        let mut recent = 0usize;
        let mut page = last;
        let mut answer = first;
        for _ in 0..MAX_STARGAZER_PAGES {
            if page != 1 || last != 1 {
                answer = self.get(&page_url(page), STAR_JSON).await?;
            }
            let stars: Vec<StarBody> = if answer.body.is_empty() {
                Vec::new()
            } else {
                answer.json(SOURCE, "stargazers")?
            };
            let times: Vec<DateTime<Utc>> = stars
                .iter()
                .filter_map(|s| DateTime::parse_from_rfc3339(s.starred_at.as_deref()?).ok())
                .map(|t| t.with_timezone(&Utc))
                .collect();
            recent += times.iter().filter(|t| **t >= since && **t <= now).count();
            let page_reaches_back = times.iter().any(|t| *t < since);
            if page_reaches_back || page <= 1 {
                break;
            }
            page -= 1;
        }
        Ok(recent as f64 / VELOCITY_DAYS as f64)
    }

    /// An owner is usually an organization; one GitHub does not know as an
    /// organization is read as a user account instead.
    async fn org(&self, owner: &str) -> Result<Fetched<GithubSignals>, CallError> {
        let fetched_at = Utc::now();
        let org_url = endpoint(&self.base, &["orgs", owner]);
        let (url, profile, kind, repos_type) =
            match self.get(&org_url, "application/vnd.github+json").await {
                Ok(answer) => (
                    org_url,
                    answer.json::<OrgBody>(SOURCE, "organization")?,
                    "orgs",
                    "public",
                ),
                Err(CallError::NotFound { .. }) => {
                    let user_url = endpoint(&self.base, &["users", owner]);
                    let user: UserBody = self
                        .get(&user_url, "application/vnd.github+json")
                        .await?
                        .json(SOURCE, "user")?;
                    let profile = OrgBody {
                        description: user.bio,
                        created_at: user.created_at,
                    };
                    (user_url, profile, "users", "owner")
                }
                Err(error) => return Err(error),
            };
        let mut repos_url = endpoint(&self.base, &[kind, owner, "repos"]);
        repos_url
            .query_pairs_mut()
            .append_pair("type", repos_type)
            .append_pair("sort", "pushed")
            .append_pair("per_page", "100");
        let repos: Vec<RepoBody> = self
            .get(&repos_url, "application/vnd.github+json")
            .await?
            .json(SOURCE, "repositories")?;
        let mut languages: BTreeMap<String, i64> = BTreeMap::new();
        let mut topics: Vec<String> = Vec::new();
        for repo in &repos {
            if let Some(language) = &repo.language {
                *languages.entry(language.clone()).or_default() += repo.stargazers_count.max(1);
            }
            for topic in &repo.topics {
                if !topics.contains(topic) && topics.len() < 20 {
                    topics.push(topic.clone());
                }
            }
        }
        let primary_language = languages
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(language, _)| language)
            .unwrap_or_default();
        let pushed_at = repos
            .iter()
            .filter_map(|r| r.pushed_at.as_deref())
            .filter_map(|t| DateTime::parse_from_rfc3339(t).ok())
            .max()
            .map(|t| dealmesh_eventlog::envelope::timestamp(t.with_timezone(&Utc)));
        Ok(Fetched {
            signals: Some(GithubSignals {
                provenance: Some(provenance(SOURCE, fetched_at, url.as_str())),
                owner: owner.to_owned(),
                repo: String::new(),
                stars: repos.iter().map(|r| r.stargazers_count.max(0)).sum(),
                forks: repos.iter().map(|r| r.forks_count.max(0)).sum(),
                contributors: 0,
                open_issues: repos.iter().map(|r| r.open_issues_count.max(0)).sum(),
                weekly_commits: Vec::new(),
                star_velocity_30d: 0.0,
                primary_language,
                topics,
                license: String::new(),
                created_at: timestamp(profile.created_at.as_deref()),
                pushed_at,
                description: profile.description.unwrap_or_default(),
            }),
            gaps: Vec::new(),
        })
    }
}

/// A sub-resource that is missing (404) is a gap; other errors fail the
/// whole source.
fn optional<T>(
    result: Result<T, CallError>,
    what: &str,
    gaps: &mut Vec<dealmesh_proto::v1::SignalGap>,
) -> Result<Option<T>, CallError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(CallError::NotFound { .. }) => {
            gaps.push(gap(SOURCE, format!("{what}: not found")));
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// The `page` number of the `rel` link in a `Link` header.
fn link_page(link: &str, rel: &str) -> Option<u32> {
    let wanted = format!("rel=\"{rel}\"");
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.split(';').any(|p| p.trim() == wanted) {
            return None;
        }
        let url = Url::parse(target.trim().trim_start_matches('<').trim_end_matches('>')).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == "page")
            .and_then(|(_, v)| v.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_prefer_the_repository_and_refuse_bad_names() {
        assert_eq!(Target::of("", "x"), Ok(None));
        assert_eq!(
            Target::of("acme", ""),
            Ok(Some(Target::Org {
                owner: "acme".into()
            }))
        );
        assert_eq!(
            Target::of("acme", "rocket"),
            Ok(Some(Target::Repo {
                owner: "acme".into(),
                repo: "rocket".into()
            }))
        );
        assert!(Target::of("../etc", "").is_err());
        assert!(Target::of("acme", "a/b").is_err());
    }

    #[test]
    fn link_header_last_page_is_found() {
        let link = r#"<https://api.github.com/repositories/1/contributors?per_page=1&page=2>; rel="next", <https://api.github.com/repositories/1/contributors?per_page=1&page=37>; rel="last""#;
        assert_eq!(link_page(link, "last"), Some(37));
        assert_eq!(link_page(link, "next"), Some(2));
        assert_eq!(link_page(link, "prev"), None);
    }
}
