//! The inputs of the thesis model, extracted and checked at the edge: from a
//! `DealEnriched` event (the consumer) or from a `ScoringFeatures` request
//! (the what-if API). The scorer only ever sees a valid [`Features`].

mod countries;

use dealmesh_proto::v1::{DealEnriched, ScoringFeatures};
use dealmesh_runtime::grpc::Violation;

pub use countries::COUNTRIES;

/// The features the model weighs, in a fixed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    Sector = 0,
    Stage,
    Geography,
    Stars,
    StarVelocity,
    Contributors,
    CommitActivity,
    Funding,
}

impl Feature {
    pub const COUNT: usize = 8;
    pub const ALL: [Feature; Self::COUNT] = [
        Feature::Sector,
        Feature::Stage,
        Feature::Geography,
        Feature::Stars,
        Feature::StarVelocity,
        Feature::Contributors,
        Feature::CommitActivity,
        Feature::Funding,
    ];

    /// The name used in the model file's `weights` and in contributions.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Sector => "sector",
            Feature::Stage => "stage",
            Feature::Geography => "geography",
            Feature::Stars => "stars",
            Feature::StarVelocity => "star_velocity",
            Feature::Contributors => "contributors",
            Feature::CommitActivity => "commit_activity",
            Feature::Funding => "funding",
        }
    }
}

/// Weeks of commit history averaged into `commits_per_week`.
pub const COMMIT_WEEKS: usize = 12;

/// A deal's features. Text fields are normalized (sector slugs, lower-case
/// stage, alpha-2 country); numbers are finite and non-negative. `None` is an
/// unknown signal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    pub sector: Option<String>,
    pub categories: Vec<String>,
    pub stage: Option<String>,
    /// Alpha-2 code when the country was recognized.
    pub country: Option<String>,
    /// The country as given, when it was not recognized.
    pub unrecognized_country: Option<String>,
    pub stars: Option<f64>,
    pub star_velocity_30d: Option<f64>,
    pub contributors: Option<f64>,
    pub commits_per_week: Option<f64>,
    pub funding_total_usd: Option<f64>,
    pub operating_status: Option<String>,
}

/// Lower-case slug: letters and digits, runs of anything else become one
/// `-` ("Developer Tools" and "developer_tools" are both `developer-tools`).
pub fn normalize_sector(sector: &str) -> String {
    let mut out = String::with_capacity(sector.len());
    for c in sector.trim().chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The alpha-2 code of a country given as alpha-2, alpha-3 or English name
/// (any case).
pub fn country_alpha2(country: &str) -> Option<&'static str> {
    let c = country.trim();
    COUNTRIES
        .iter()
        .find(|(a2, a3, name)| {
            a2.eq_ignore_ascii_case(c) || a3.eq_ignore_ascii_case(c) || name.eq_ignore_ascii_case(c)
        })
        .map(|(a2, _, _)| *a2)
}

fn text(value: &str) -> Option<&str> {
    let value = value.trim();
    (!value.is_empty()).then_some(value)
}

fn count(field: &str, value: i64, violations: &mut Vec<Violation>) -> f64 {
    if value < 0 {
        violations.push(Violation::new(field, format!("must be >= 0, got {value}")));
    }
    value as f64
}

fn real(field: &str, value: f64, violations: &mut Vec<Violation>) -> f64 {
    if !value.is_finite() {
        violations.push(Violation::new(
            field,
            format!("must be a finite number, got {value}"),
        ));
    } else if value < 0.0 {
        violations.push(Violation::new(field, format!("must be >= 0, got {value}")));
    }
    value
}

impl Features {
    /// Features of an enriched deal. Bad numbers (negative counts, NaN) are
    /// violations naming the event field; unknown text values (a stage or
    /// country this build does not know) are kept and score nothing.
    pub fn from_enriched(enriched: &DealEnriched) -> Result<Self, Vec<Violation>> {
        let mut v = Vec::new();
        let mut features = Features::default();
        if let Some(analysis) = &enriched.analysis {
            features.sector = text(&analysis.sector).map(normalize_sector);
        }
        if let Some(github) = &enriched.github {
            features.stars = Some(count("github.stars", github.stars, &mut v));
            features.contributors = Some(count("github.contributors", github.contributors, &mut v));
            features.star_velocity_30d = Some(real(
                "github.star_velocity_30d",
                github.star_velocity_30d,
                &mut v,
            ));
            let weeks = &github.weekly_commits;
            if let Some(i) = weeks.iter().position(|c| *c < 0) {
                v.push(Violation::new(
                    format!("github.weekly_commits[{i}]"),
                    format!("must be >= 0, got {}", weeks[i]),
                ));
            }
            if !weeks.is_empty() {
                let recent = &weeks[weeks.len().saturating_sub(COMMIT_WEEKS)..];
                let sum: f64 = recent.iter().map(|c| *c as f64).sum();
                features.commits_per_week = Some(sum / recent.len() as f64);
            }
        }
        if let Some(crunchbase) = &enriched.crunchbase {
            if let Some(money) = &crunchbase.funding_total {
                features.funding_total_usd = Some(count(
                    "crunchbase.funding_total.value_usd",
                    money.value_usd,
                    &mut v,
                ));
            }
            if let Some(round) = &crunchbase.last_round {
                features.stage = text(&round.investment_type).map(|s| s.to_ascii_lowercase());
            }
            features.categories = crunchbase
                .categories
                .iter()
                .filter_map(|c| text(c).map(normalize_sector))
                .collect();
            if let Some(location) = &crunchbase.location {
                let given = text(&location.country_code).or_else(|| text(&location.country));
                if let Some(given) = given {
                    match country_alpha2(given) {
                        Some(code) => features.country = Some(code.to_owned()),
                        None => features.unrecognized_country = Some(given.to_owned()),
                    }
                }
            }
            features.operating_status =
                text(&crunchbase.operating_status).map(|s| s.to_ascii_lowercase());
        }
        if v.is_empty() { Ok(features) } else { Err(v) }
    }

    /// Features from a what-if request. Stricter than events: a stage or
    /// country this service does not know is a violation, since a person
    /// typed it and wants to hear about the typo. Fields are named under
    /// `prefix` (e.g. `features`).
    pub fn from_proto(proto: &ScoringFeatures, prefix: &str) -> Result<Self, Vec<Violation>> {
        let mut v = Vec::new();
        let field = |name: &str| format!("{prefix}.{name}");
        let stage = text(&proto.stage).map(|s| s.to_ascii_lowercase());
        if let Some(stage) = &stage
            && !crate::model::is_stage(stage)
        {
            v.push(Violation::new(
                field("stage"),
                format!("unknown stage {stage:?}; expected a Crunchbase investment type such as \"seed\" or \"series_a\""),
            ));
        }
        let country = match text(&proto.country) {
            Some(given) => match country_alpha2(given) {
                Some(code) => Some(code.to_owned()),
                None => {
                    v.push(Violation::new(
                        field("country"),
                        format!("unknown country {given:?}; expected an ISO 3166-1 code such as \"US\" or \"DEU\", or a country name"),
                    ));
                    None
                }
            },
            None => None,
        };
        let features = Features {
            sector: text(&proto.sector).map(normalize_sector),
            categories: proto
                .categories
                .iter()
                .filter_map(|c| text(c).map(normalize_sector))
                .collect(),
            stage,
            country,
            unrecognized_country: None,
            stars: proto.stars.map(|x| count(&field("stars"), x, &mut v)),
            star_velocity_30d: proto
                .star_velocity_30d
                .map(|x| real(&field("star_velocity_30d"), x, &mut v)),
            contributors: proto
                .contributors
                .map(|x| count(&field("contributors"), x, &mut v)),
            commits_per_week: proto
                .commits_per_week
                .map(|x| real(&field("commits_per_week"), x, &mut v)),
            funding_total_usd: proto
                .funding_total_usd
                .map(|x| count(&field("funding_total_usd"), x, &mut v)),
            operating_status: text(&proto.operating_status).map(|s| s.to_ascii_lowercase()),
        };
        if v.is_empty() { Ok(features) } else { Err(v) }
    }

    /// The features as the API shows them.
    pub fn to_proto(&self) -> ScoringFeatures {
        ScoringFeatures {
            sector: self.sector.clone().unwrap_or_default(),
            stage: self.stage.clone().unwrap_or_default(),
            country: self
                .country
                .clone()
                .or_else(|| self.unrecognized_country.clone())
                .unwrap_or_default(),
            stars: self.stars.map(|x| x as i64),
            star_velocity_30d: self.star_velocity_30d,
            contributors: self.contributors.map(|x| x as i64),
            commits_per_week: self.commits_per_week,
            funding_total_usd: self.funding_total_usd.map(|x| x as i64),
            operating_status: self.operating_status.clone().unwrap_or_default(),
            categories: self.categories.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dealmesh_proto::v1::{
        Analysis, CrunchbaseSignals, FundingRound, GithubSignals, Location, Money,
    };

    #[test]
    fn sectors_normalize_to_slugs() {
        assert_eq!(normalize_sector("Developer Tools"), "developer-tools");
        assert_eq!(normalize_sector(" climate_software "), "climate-software");
        assert_eq!(normalize_sector("AI / ML"), "ai-ml");
    }

    #[test]
    fn countries_are_recognized_by_code_or_name() {
        assert_eq!(country_alpha2("DE"), Some("DE"));
        assert_eq!(country_alpha2("deu"), Some("DE"));
        assert_eq!(country_alpha2("Germany"), Some("DE"));
        assert_eq!(country_alpha2("Atlantis"), None);
    }

    #[test]
    fn enriched_deal_yields_its_features() {
        let enriched = DealEnriched {
            github: Some(GithubSignals {
                stars: 1200,
                contributors: 14,
                star_velocity_30d: 3.5,
                weekly_commits: [vec![100; 40], vec![6; 12]].concat(),
                ..Default::default()
            }),
            crunchbase: Some(CrunchbaseSignals {
                funding_total: Some(Money {
                    value: 7_500_000,
                    currency: "EUR".into(),
                    value_usd: 8_100_000,
                }),
                last_round: Some(FundingRound {
                    investment_type: "Seed".into(),
                    ..Default::default()
                }),
                location: Some(Location {
                    country: "Germany".into(),
                    ..Default::default()
                }),
                operating_status: "active".into(),
                categories: vec!["Clean Energy".into()],
                ..Default::default()
            }),
            analysis: Some(Analysis {
                sector: "Climate Software".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let f = Features::from_enriched(&enriched).unwrap();
        assert_eq!(f.sector.as_deref(), Some("climate-software"));
        assert_eq!(f.stage.as_deref(), Some("seed"));
        assert_eq!(f.country.as_deref(), Some("DE"));
        assert_eq!(f.stars, Some(1200.0));
        // Only the last 12 weeks count.
        assert_eq!(f.commits_per_week, Some(6.0));
        assert_eq!(f.funding_total_usd, Some(8_100_000.0));
        assert_eq!(f.categories, ["clean-energy"]);
    }

    #[test]
    fn missing_sources_are_unknown_not_zero() {
        let f = Features::from_enriched(&DealEnriched::default()).unwrap();
        assert_eq!(f, Features::default());
    }

    #[test]
    fn bad_numbers_in_an_event_name_the_field() {
        let enriched = DealEnriched {
            github: Some(GithubSignals {
                stars: -3,
                star_velocity_30d: f64::NAN,
                weekly_commits: vec![1, -2],
                ..Default::default()
            }),
            ..Default::default()
        };
        let violations = Features::from_enriched(&enriched).unwrap_err();
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "github.stars",
                "github.star_velocity_30d",
                "github.weekly_commits[1]"
            ]
        );
    }

    #[test]
    fn unknown_stage_in_an_event_is_kept_but_refused_in_a_request() {
        let enriched = DealEnriched {
            crunchbase: Some(CrunchbaseSignals {
                last_round: Some(FundingRound {
                    investment_type: "series_z".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Features::from_enriched(&enriched).unwrap().stage.as_deref(),
            Some("series_z")
        );
        let request = ScoringFeatures {
            stage: "series_z".into(),
            country: "Atlantis".into(),
            stars: Some(-1),
            commits_per_week: Some(f64::INFINITY),
            ..Default::default()
        };
        let violations = Features::from_proto(&request, "features").unwrap_err();
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "features.stage",
                "features.country",
                "features.stars",
                "features.commits_per_week"
            ]
        );
        assert!(violations[0].description.contains("series_z"));
    }
}
