//! Subscriptions defined by configuration: a TOML file of `[[subscription]]`
//! tables, synchronised into the database on start (added, updated, and
//! removed when they leave the file).
//!
//! ```toml
//! [[subscription]]
//! name = "partners-fintech-high-scores"   # required, unique: the stable id
//! subscriber = "alice"                      # required
//! role = "partner"                          # admin|partner|analyst|lp|service
//! triggers = ["deal_scored"]
//! min_score = 80
//! sectors = ["fintech"]
//! webhook_url = "https://hooks.example.com/dealmesh"
//! webhook_secret = "at-least-16-characters"
//! webhook_format = "json"                   # or "slack"
//! # or: email = "alice@example.com", digest = true
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use dealmesh_auth::{Principal, Role};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Draft, Filter, NewSubscription, Origin};

/// Namespace of the ids of configured subscriptions (UUIDv5 of the name), so
/// a subscription keeps its id, and its delivery history, across restarts.
const CONFIG_NAMESPACE: Uuid = Uuid::from_u128(0x6e6f_7469_6679_4c5f_8000_636f_6e66_6967);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    subscription: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    subscriber: String,
    role: String,
    lp_id: Option<String>,
    triggers: Vec<String>,
    min_score: Option<f64>,
    #[serde(default)]
    sectors: Vec<String>,
    #[serde(default)]
    deal_ids: Vec<String>,
    #[serde(default)]
    owned_deals_only: bool,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    webhook_format: Option<String>,
    email: Option<String>,
    #[serde(default)]
    digest: bool,
}

/// Parses and validates the file's text; every problem is reported as
/// `FILE: subscription[N] (NAME): FIELD: problem`.
pub fn parse(
    text: &str,
    file_name: &str,
    email_enabled: bool,
) -> Result<Vec<NewSubscription>, Vec<String>> {
    let file: File = toml::from_str(text).map_err(|e| vec![format!("{file_name}: {e}")])?;
    let mut errors = Vec::new();
    let mut subscriptions = Vec::new();
    let mut names = BTreeSet::new();
    for (index, entry) in file.subscription.into_iter().enumerate() {
        let at = format!("{file_name}: subscription[{index}] ({})", entry.name);
        if entry.name.trim().is_empty() {
            errors.push(format!("{at}: name: is required"));
            continue;
        }
        if !names.insert(entry.name.clone()) {
            errors.push(format!(
                "{at}: name: appears twice; names identify subscriptions"
            ));
            continue;
        }
        let Some(role) = Role::parse(&entry.role) else {
            errors.push(format!(
                "{at}: role: {:?} is not admin, partner, analyst, lp or service",
                entry.role
            ));
            continue;
        };
        if entry.subscriber.trim().is_empty() {
            errors.push(format!("{at}: subscriber: is required"));
            continue;
        }
        let mut triggers = Vec::new();
        for (i, name) in entry.triggers.iter().enumerate() {
            match crate::event::parse_trigger(name) {
                Some(t) => triggers.push(t as i32),
                None => errors.push(format!("{at}: triggers[{i}]: unknown trigger {name:?}")),
            }
        }
        let format = match entry.webhook_format.as_deref() {
            None | Some("json") => dealmesh_proto::v1::WebhookFormat::Json as i32,
            Some("slack") => dealmesh_proto::v1::WebhookFormat::Slack as i32,
            Some(other) => {
                errors.push(format!(
                    "{at}: webhook_format: {other:?} is not json or slack"
                ));
                continue;
            }
        };
        let principal = Principal {
            subject: entry.subscriber.clone(),
            role,
            lp_id: (role == Role::Lp).then(|| {
                entry
                    .lp_id
                    .clone()
                    .unwrap_or_else(|| entry.subscriber.clone())
            }),
            name: None,
        };
        let draft = Draft {
            name: entry.name.clone(),
            triggers,
            filter: Filter {
                min_score: entry.min_score,
                sectors: entry.sectors,
                deal_ids: entry.deal_ids,
                owned_deals_only: entry.owned_deals_only,
            },
            webhook: entry
                .webhook_url
                .map(|url| (url, entry.webhook_secret.unwrap_or_default(), format)),
            email: entry.email.map(|address| (address, entry.digest)),
        };
        let mut draft = draft;
        let missing_secret = draft.webhook.as_ref().is_some_and(|(_, s, _)| s.is_empty());
        if missing_secret {
            // A generated secret would change on every start and nobody
            // could read it: configured webhooks name theirs.
            errors.push(format!(
                "{at}: webhook_secret: is required for a configured webhook"
            ));
            if let Some((_, secret, _)) = draft.webhook.as_mut() {
                // Only so the other fields still get checked and reported.
                *secret = "placeholder-secret-never-stored".into();
            }
        }
        match draft.validate("", &principal, email_enabled, Origin::Config) {
            Ok(_) if missing_secret => {}
            Ok(mut subscription) => {
                subscription.id = Uuid::new_v5(&CONFIG_NAMESPACE, entry.name.as_bytes());
                subscriptions.push(subscription);
            }
            Err(violations) => {
                for v in violations {
                    let field = match v.field.as_str() {
                        "webhook.url" => "webhook_url",
                        "webhook.secret" => "webhook_secret",
                        "email.address" => "email",
                        "channel" => "webhook_url/email",
                        other => other.strip_prefix("filter.").unwrap_or(other),
                    };
                    errors.push(format!("{at}: {field}: {}", v.description));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(subscriptions)
    } else {
        Err(errors)
    }
}

/// Reads and parses the file.
pub fn load(path: &Path, email_enabled: bool) -> Result<Vec<NewSubscription>, Vec<String>> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{name}: cannot read: {e}")])?;
    parse(&text, &name, email_enabled)
}

/// Makes the configured subscriptions in the database exactly `subscriptions`.
#[tracing::instrument(skip_all, fields(count = subscriptions.len()), err)]
pub async fn sync(pool: &PgPool, subscriptions: &[NewSubscription]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for s in subscriptions {
        super::upsert(&mut *tx, s).await.map_err(|e| match e {
            super::StoreError::Database(e) => e,
            other => sqlx::Error::Protocol(other.to_string()),
        })?;
    }
    let keep: Vec<Uuid> = subscriptions.iter().map(|s| s.id).collect();
    let removed = sqlx::query(
        "UPDATE subscriptions SET deleted_at = now() \
         WHERE origin = 'config' AND deleted_at IS NULL AND NOT (id = ANY($1))",
    )
    .bind(&keep)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    tracing::info!(
        configured = keep.len(),
        removed,
        "configured subscriptions synchronised"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_parses_with_stable_ids() {
        let text = r#"
[[subscription]]
name = "fintech-high"
subscriber = "alice"
role = "partner"
triggers = ["deal_scored"]
min_score = 80
sectors = ["FinTech"]
webhook_url = "https://hooks.example.com/x"
webhook_secret = "0123456789abcdef"

[[subscription]]
name = "lp-votes"
subscriber = "lp-1"
role = "lp"
triggers = ["vote_opened", "vote_closed"]
email = "lp1@example.com"
digest = true
"#;
        let a = parse(text, "subs.toml", true).unwrap();
        let b = parse(text, "subs.toml", true).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].id, b[0].id);
        assert_eq!(a[0].filter.sectors, ["fintech"]);
        assert_eq!(a[1].lp_id.as_deref(), Some("lp-1"));
    }

    #[test]
    fn problems_name_the_entry_and_field() {
        let text = r#"
[[subscription]]
name = "bad"
subscriber = "alice"
role = "partner"
triggers = ["deal_scored", "nonsense"]
webhook_url = "ftp://x"
webhook_secret = "0123456789abcdef"
"#;
        let errors = parse(text, "subs.toml", true).unwrap_err();
        assert!(
            errors.iter().any(|e| e
                == "subs.toml: subscription[0] (bad): triggers[1]: unknown trigger \"nonsense\""),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("subs.toml: subscription[0] (bad): webhook_url: scheme")),
            "{errors:?}"
        );
        let text = r#"
[[subscription]]
name = "no-secret"
subscriber = "alice"
role = "partner"
triggers = ["deal_scored"]
webhook_url = "ftp://x"
"#;
        let errors = parse(text, "subs.toml", true).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].ends_with("webhook_secret: is required for a configured webhook"));
        assert!(errors[1].contains("webhook_url: scheme"));
        let errors = parse("[[subscription]]\nname = 1\n", "subs.toml", true).unwrap_err();
        assert!(errors[0].starts_with("subs.toml: "), "{errors:?}");
    }
}
