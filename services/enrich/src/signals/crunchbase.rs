//! Crunchbase API v4: an organization's funding, headcount band, founding
//! date, categories and location.

use std::sync::Arc;

use chrono::Utc;
use dealmesh_proto::v1::{CrunchbaseSignals, FundingRound, Location, Money};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::instrument;
use url::Url;

use super::{Fetched, endpoint, gap, provenance};
use crate::provider::{CallError, Provider};

pub const SOURCE: &str = "crunchbase";

/// Fields asked for; everything else Crunchbase holds is left there.
const FIELD_IDS: &str = "identifier,short_description,website_url,founded_on,operating_status,\
categories,location_identifiers,num_employees_enum,funding_total,last_funding_type,\
last_funding_at,num_funding_rounds";

/// The documented `num_employees_enum` codes. A code outside this list is
/// recorded as a gap instead of being passed on as if it meant something.
pub const HEADCOUNT_BANDS: &[&str] = &[
    "c_00001_00010",
    "c_00011_00050",
    "c_00051_00100",
    "c_00101_00250",
    "c_00251_00500",
    "c_00501_01000",
    "c_01001_05000",
    "c_05001_10000",
    "c_10001_max",
];

/// Crunchbase permalinks: lower-case letters, digits, `-` and `_`.
pub fn is_permalink(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 200
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
}

pub struct CrunchbaseClient {
    provider: Arc<Provider>,
    base: Url,
    api_key: SecretString,
}

#[derive(Deserialize)]
struct EntityBody {
    properties: Properties,
    #[serde(default)]
    cards: Cards,
}

#[derive(Deserialize, Default)]
struct Properties {
    identifier: Option<Identifier>,
    short_description: Option<String>,
    founded_on: Option<DateValue>,
    operating_status: Option<String>,
    #[serde(default)]
    categories: Vec<Identifier>,
    #[serde(default)]
    location_identifiers: Vec<LocationIdentifier>,
    num_employees_enum: Option<String>,
    funding_total: Option<MoneyBody>,
    last_funding_type: Option<String>,
    last_funding_at: Option<String>,
    num_funding_rounds: Option<i64>,
}

#[derive(Deserialize)]
struct Identifier {
    value: Option<String>,
    permalink: Option<String>,
}

#[derive(Deserialize)]
struct LocationIdentifier {
    value: Option<String>,
    location_type: Option<String>,
}

#[derive(Deserialize)]
struct DateValue {
    value: Option<String>,
}

#[derive(Deserialize, Clone)]
struct MoneyBody {
    value: Option<f64>,
    currency: Option<String>,
    value_usd: Option<f64>,
}

#[derive(Deserialize, Default)]
struct Cards {
    #[serde(default)]
    raised_funding_rounds: Vec<RoundBody>,
}

#[derive(Deserialize)]
struct RoundBody {
    announced_on: Option<String>,
    investment_type: Option<String>,
    money_raised: Option<MoneyBody>,
}

fn money(body: &MoneyBody) -> Money {
    Money {
        value: body.value.unwrap_or(0.0).round() as i64,
        currency: body.currency.clone().unwrap_or_default(),
        value_usd: body.value_usd.unwrap_or(0.0).round() as i64,
    }
}

impl CrunchbaseClient {
    pub fn new(provider: Arc<Provider>, base: Url, api_key: SecretString) -> Self {
        Self {
            provider,
            base,
            api_key,
        }
    }

    /// Signals for the organization `permalink`; one Crunchbase does not
    /// know is a gap.
    #[instrument(skip_all, fields(permalink))]
    pub async fn fetch(&self, permalink: &str) -> Result<Fetched<CrunchbaseSignals>, CallError> {
        let mut url = endpoint(
            &self.base,
            &["api", "v4", "entities", "organizations", permalink],
        );
        url.query_pairs_mut()
            .append_pair("field_ids", FIELD_IDS)
            .append_pair("card_ids", "raised_funding_rounds");
        let fetched_at = Utc::now();
        let answer = self
            .provider
            .call(None, || {
                self.provider
                    .client()
                    .get(url.clone())
                    .header("X-cb-user-key", self.api_key.expose_secret())
                    .header(reqwest::header::ACCEPT, "application/json")
            })
            .await;
        let answer = match answer {
            Err(CallError::NotFound { .. }) => {
                return Ok(Fetched::gap(
                    SOURCE,
                    format!("organization {permalink:?} not found"),
                ));
            }
            other => other?,
        };
        let entity: EntityBody = answer.json(SOURCE, "organization")?;
        let p = entity.properties;
        let mut gaps = Vec::new();

        let headcount_band = match p.num_employees_enum {
            Some(band) if HEADCOUNT_BANDS.contains(&band.as_str()) => band,
            Some(band) => {
                gaps.push(gap(
                    SOURCE,
                    format!(
                        "unknown num_employees_enum {:?}; headcount left out",
                        crate::provider::truncate_chars(&band, 40)
                    ),
                ));
                String::new()
            }
            None => String::new(),
        };
        // The latest announced round; the organization's own summary
        // fields when the card is missing.
        let last_round = entity
            .cards
            .raised_funding_rounds
            .iter()
            .filter(|r| r.announced_on.is_some())
            .max_by(|a, b| a.announced_on.cmp(&b.announced_on))
            .map(|r| FundingRound {
                investment_type: r.investment_type.clone().unwrap_or_default(),
                announced_on: r.announced_on.clone().unwrap_or_default(),
                money_raised: r.money_raised.as_ref().map(money),
            })
            .or_else(|| {
                p.last_funding_type.as_ref().map(|kind| FundingRound {
                    investment_type: kind.clone(),
                    announced_on: p.last_funding_at.clone().unwrap_or_default(),
                    money_raised: None,
                })
            });
        let place = |kind: &str| {
            p.location_identifiers
                .iter()
                .find(|l| l.location_type.as_deref() == Some(kind))
                .and_then(|l| l.value.clone())
                .unwrap_or_default()
        };
        let location = (!p.location_identifiers.is_empty()).then(|| Location {
            city: place("city"),
            region: place("region"),
            country_code: String::new(),
            country: place("country"),
        });
        let permalink = p
            .identifier
            .as_ref()
            .and_then(|i| i.permalink.clone())
            .unwrap_or_else(|| permalink.to_owned());
        Ok(Fetched {
            signals: Some(CrunchbaseSignals {
                provenance: Some(provenance(SOURCE, fetched_at, &public_url(&url))),
                permalink,
                funding_total: p.funding_total.as_ref().map(money),
                last_round,
                headcount_band,
                founded_on: p.founded_on.and_then(|d| d.value).unwrap_or_default(),
                categories: p
                    .categories
                    .into_iter()
                    .filter_map(|c| c.value.or(c.permalink))
                    .collect(),
                location,
                short_description: p.short_description.unwrap_or_default(),
                operating_status: p.operating_status.unwrap_or_default(),
                num_funding_rounds: p
                    .num_funding_rounds
                    .unwrap_or(entity.cards.raised_funding_rounds.len() as i64),
            }),
            gaps,
        })
    }
}

/// The URL without its query, so provenance stays short.
fn public_url(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permalinks_are_checked() {
        assert!(is_permalink("lumen-grid"));
        assert!(!is_permalink("Lumen Grid"));
        assert!(!is_permalink("../x"));
        assert!(!is_permalink(""));
    }
}
