//! The thesis model: what the fund looks for, read from a TOML file.
//!
//! The file is parsed with serde into [`RawModel`] (unknown keys rejected),
//! then validated into a [`Model`]; every problem is reported with the path of
//! the field it is about (`weights.stars: must be >= 0`). A file either
//! yields a whole valid model or a list of field errors, never half a model.
//!
//! The model's version is the file's `version` plus a short hash of its
//! canonical content, so two files that differ in anything that matters never
//! share a version, while reformatting or comments do not change it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::features::{self, Feature};

/// Crunchbase's investment types: the stages a model may name.
pub const STAGES: &[&str] = &[
    "angel",
    "convertible_note",
    "corporate_round",
    "debt_financing",
    "equity_crowdfunding",
    "grant",
    "initial_coin_offering",
    "non_equity_assistance",
    "post_ipo_debt",
    "post_ipo_equity",
    "post_ipo_secondary",
    "pre_seed",
    "private_equity",
    "product_crowdfunding",
    "secondary_market",
    "seed",
    "series_a",
    "series_b",
    "series_c",
    "series_d",
    "series_e",
    "series_f",
    "series_g",
    "series_h",
    "series_i",
    "series_j",
    "series_unknown",
    "undisclosed",
];

/// Whether `stage` is a known investment type.
pub fn is_stage(stage: &str) -> bool {
    STAGES.binary_search(&stage).is_ok()
}

/// One problem with a model file, located by field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// e.g. `weights.stars`, `stages.preferences.series_z`, or `` for the
    /// file as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a model file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
}

impl ModelError {
    /// The field errors, empty for a read failure.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ModelError::Read { .. } => &[],
            ModelError::Invalid(errors) => errors,
        }
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The model file as written. Every table rejects keys it does not know, so a
/// typo is an error rather than a silently ignored setting.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub weights: RawWeights,
    #[serde(default)]
    pub sectors: RawPreferences,
    #[serde(default)]
    pub stages: RawPreferences,
    #[serde(default)]
    pub geographies: RawPreferences,
    #[serde(default)]
    pub traction: RawTraction,
    #[serde(default)]
    pub filters: RawFilters,
}

/// Relative importance of each feature; a weight of 0 leaves it out.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeights {
    #[serde(default)]
    pub sector: f64,
    #[serde(default)]
    pub stage: f64,
    #[serde(default)]
    pub geography: f64,
    #[serde(default)]
    pub stars: f64,
    #[serde(default)]
    pub star_velocity: f64,
    #[serde(default)]
    pub contributors: f64,
    #[serde(default)]
    pub commit_activity: f64,
    #[serde(default)]
    pub funding: f64,
}

/// How much the fund likes each value, in [0, 1]; values not listed get
/// `default`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreferences {
    #[serde(default)]
    pub default: f64,
    #[serde(default)]
    pub preferences: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraction {
    pub stars: Option<RawRamp>,
    pub star_velocity: Option<RawRamp>,
    pub contributors: Option<RawRamp>,
    pub commit_activity: Option<RawRamp>,
    pub funding: Option<RawFundingBand>,
}

/// A traction threshold: at or below `floor` the feature is worth 0, at or
/// above `target` it is worth 1, in between it rises along `curve`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRamp {
    #[serde(default)]
    pub floor: f64,
    pub target: f64,
    #[serde(default)]
    pub curve: Curve,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    #[default]
    Linear,
    /// Logarithmic: the first stars count more than the ten-thousandth.
    Log,
}

/// The funding the fund wants to see: 1 inside `[ideal_min_usd,
/// ideal_max_usd]`, rising linearly from 0 below, falling linearly to 0 at
/// `ceiling_usd` above.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFundingBand {
    pub ideal_min_usd: f64,
    pub ideal_max_usd: f64,
    pub ceiling_usd: f64,
}

/// Hard filters: a deal failing any of them scores 0.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilters {
    #[serde(default)]
    pub excluded_sectors: Vec<String>,
    #[serde(default)]
    pub excluded_stages: Vec<String>,
    pub max_funding_usd: Option<f64>,
    /// Alpha-2 codes; empty means anywhere. A deal whose country is unknown
    /// fails this filter when it is set.
    #[serde(default)]
    pub required_countries: Vec<String>,
    /// Fail deals whose Crunchbase operating status is `closed`.
    #[serde(default)]
    pub exclude_closed: bool,
}

/// A traction threshold, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    pub floor: f64,
    pub target: f64,
    pub curve: Curve,
}

impl Ramp {
    /// The value of `x` on this ramp, in [0, 1].
    pub fn normalize(&self, x: f64) -> f64 {
        if x <= self.floor {
            return 0.0;
        }
        if x >= self.target {
            return 1.0;
        }
        let v = match self.curve {
            Curve::Linear => (x - self.floor) / (self.target - self.floor),
            Curve::Log => (x - self.floor).ln_1p() / (self.target - self.floor).ln_1p(),
        };
        v.clamp(0.0, 1.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FundingBand {
    pub ideal_min_usd: f64,
    pub ideal_max_usd: f64,
    pub ceiling_usd: f64,
}

impl FundingBand {
    pub fn normalize(&self, usd: f64) -> f64 {
        let v = if usd < self.ideal_min_usd {
            usd / self.ideal_min_usd
        } else if usd <= self.ideal_max_usd {
            1.0
        } else if usd >= self.ceiling_usd {
            0.0
        } else {
            (self.ceiling_usd - usd) / (self.ceiling_usd - self.ideal_max_usd)
        };
        v.clamp(0.0, 1.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Preferences {
    pub default: f64,
    pub values: BTreeMap<String, f64>,
}

impl Preferences {
    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filters {
    pub excluded_sectors: Vec<String>,
    pub excluded_stages: Vec<String>,
    pub max_funding_usd: Option<f64>,
    pub required_countries: Vec<String>,
    pub exclude_closed: bool,
}

/// A validated thesis model. Built only by [`Model::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// `<file version>+<12 hex digits of the content hash>`.
    pub version: String,
    pub description: String,
    /// Weight of each feature, in [`Feature::ALL`] order; all >= 0, sum > 0.
    pub weights: [f64; Feature::COUNT],
    pub total_weight: f64,
    pub sectors: Preferences,
    pub stages: Preferences,
    pub geographies: Preferences,
    pub stars: Ramp,
    pub star_velocity: Ramp,
    pub contributors: Ramp,
    pub commit_activity: Ramp,
    pub funding: FundingBand,
    pub filters: Filters,
}

/// Neutral thresholds for a traction feature the file leaves out (allowed
/// only when its weight is 0, so they never change a score).
const UNUSED_RAMP: Ramp = Ramp {
    floor: 0.0,
    target: 1.0,
    curve: Curve::Linear,
};

impl Model {
    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates a model from TOML text.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let raw = parse_raw(text).map_err(|e| ModelError::Invalid(vec![e]))?;
        Self::validate(raw).map_err(ModelError::Invalid)
    }

    /// Validates a parsed file, collecting every field error.
    pub fn validate(raw: RawModel) -> Result<Self, Vec<FieldError>> {
        let mut v = Validator::default();
        let version = raw.version.trim();
        if version.is_empty() {
            v.error("version", "must not be empty");
        } else if version.len() > 64
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            v.error(
                "version",
                "must be at most 64 ASCII letters, digits, '.', '-' or '_'",
            );
        }

        let w = &raw.weights;
        let weights = [
            w.sector,
            w.stage,
            w.geography,
            w.stars,
            w.star_velocity,
            w.contributors,
            w.commit_activity,
            w.funding,
        ];
        for (feature, weight) in Feature::ALL.iter().zip(weights) {
            let field = format!("weights.{}", feature.name());
            if !weight.is_finite() || weight < 0.0 {
                v.error(
                    &field,
                    format!("must be a finite number >= 0, got {weight}"),
                );
            }
        }
        let total_weight: f64 = weights.iter().filter(|w| w.is_finite() && **w > 0.0).sum();
        if total_weight <= 0.0 {
            v.error("weights", "at least one weight must be > 0");
        }

        let sectors = v.preferences("sectors", &raw.sectors, |key| {
            (features::normalize_sector(key) != key).then(|| {
                format!(
                    "sector keys are lower-case slugs, write {:?}",
                    features::normalize_sector(key)
                )
            })
        });
        let stages = v.preferences("stages", &raw.stages, |key| {
            (!is_stage(key)).then(|| unknown_stage(key))
        });
        let geographies = v.preferences("geographies", &raw.geographies, country_problem);

        let t = &raw.traction;
        let stars = v.ramp("stars", t.stars.as_ref(), w.stars);
        let star_velocity = v.ramp("star_velocity", t.star_velocity.as_ref(), w.star_velocity);
        let contributors = v.ramp("contributors", t.contributors.as_ref(), w.contributors);
        let commit_activity = v.ramp(
            "commit_activity",
            t.commit_activity.as_ref(),
            w.commit_activity,
        );
        let funding = v.funding(t.funding.as_ref(), w.funding);

        let f = &raw.filters;
        for (i, sector) in f.excluded_sectors.iter().enumerate() {
            if features::normalize_sector(sector) != *sector || sector.is_empty() {
                v.error(
                    format!("filters.excluded_sectors[{i}]"),
                    format!("sector {sector:?} is not a lower-case slug"),
                );
            }
        }
        for (i, stage) in f.excluded_stages.iter().enumerate() {
            if !is_stage(stage) {
                v.error(
                    format!("filters.excluded_stages[{i}]"),
                    unknown_stage(stage),
                );
            }
        }
        for (i, country) in f.required_countries.iter().enumerate() {
            if let Some(problem) = country_problem(country) {
                v.error(format!("filters.required_countries[{i}]"), problem);
            }
        }
        if let Some(max) = f.max_funding_usd
            && (!max.is_finite() || max < 0.0)
        {
            v.error(
                "filters.max_funding_usd",
                format!("must be a finite number >= 0, got {max}"),
            );
        }

        if !v.errors.is_empty() {
            return Err(v.errors);
        }
        let version = format!("{version}+{}", content_hash(&raw));
        Ok(Model {
            version,
            description: raw.description.trim().to_owned(),
            weights,
            total_weight,
            sectors,
            stages,
            geographies,
            stars,
            star_velocity,
            contributors,
            commit_activity,
            funding,
            filters: Filters {
                excluded_sectors: f.excluded_sectors.clone(),
                excluded_stages: f.excluded_stages.clone(),
                max_funding_usd: f.max_funding_usd,
                required_countries: f.required_countries.clone(),
                exclude_closed: f.exclude_closed,
            },
        })
    }

    pub fn weight(&self, feature: Feature) -> f64 {
        self.weights[feature as usize]
    }
}

fn unknown_stage(stage: &str) -> String {
    format!(
        "unknown stage {stage:?}; expected a Crunchbase investment type such as \"pre_seed\", \
         \"seed\", \"series_a\" (see the README for the full list)"
    )
}

fn country_problem(code: &str) -> Option<String> {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Some(format!(
            "country {code:?} must be an upper-case ISO 3166-1 alpha-2 code such as \"US\""
        ));
    }
    if features::country_alpha2(code).is_none() {
        return Some(format!("unknown country code {code:?}"));
    }
    None
}

/// Parses TOML into the raw model; a syntax or type error names the field
/// path serde was at and the line.
fn parse_raw(text: &str) -> Result<RawModel, FieldError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| toml_error("", text, &e))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        toml_error(&field, text, e.inner())
    })
}

fn toml_error(field: &str, text: &str, error: &toml::de::Error) -> FieldError {
    let line = error.span().map(|span| {
        text.as_bytes()[..span.start.min(text.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    });
    let message = error.message().trim().to_owned();
    FieldError {
        field: field.to_owned(),
        message: match line {
            Some(line) => format!("{message} (line {line})"),
            None => message,
        },
    }
}

/// 12 hex digits of SHA-256 over the model's canonical JSON form (sorted
/// maps, defaults filled in), so equal models hash equal however written.
fn content_hash(raw: &RawModel) -> String {
    let canonical = serde_json::to_vec(raw).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    hex::encode(&digest[..6])
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn unit(&mut self, field: &str, value: f64) {
        if !(0.0..=1.0).contains(&value) {
            self.error(field, format!("must be between 0 and 1, got {value}"));
        }
    }

    fn preferences(
        &mut self,
        table: &str,
        raw: &RawPreferences,
        key_problem: impl Fn(&str) -> Option<String>,
    ) -> Preferences {
        self.unit(&format!("{table}.default"), raw.default);
        for (key, value) in &raw.preferences {
            let field = format!("{table}.preferences.{key}");
            if let Some(problem) = key_problem(key) {
                self.error(&field, problem);
            }
            self.unit(&field, *value);
        }
        Preferences {
            default: raw.default,
            values: raw.preferences.clone(),
        }
    }

    fn ramp(&mut self, name: &str, raw: Option<&RawRamp>, weight: f64) -> Ramp {
        let field = format!("traction.{name}");
        let Some(raw) = raw else {
            if weight > 0.0 {
                self.error(
                    field,
                    format!("missing; weights.{name} is {weight}, so its thresholds are needed"),
                );
            }
            return UNUSED_RAMP;
        };
        if !raw.floor.is_finite() || raw.floor < 0.0 {
            self.error(
                format!("{field}.floor"),
                format!("must be a finite number >= 0, got {}", raw.floor),
            );
        }
        if !raw.target.is_finite() || raw.target <= raw.floor {
            self.error(
                format!("{field}.target"),
                format!(
                    "must be a finite number greater than floor ({}), got {}",
                    raw.floor, raw.target
                ),
            );
        }
        Ramp {
            floor: raw.floor,
            target: raw.target,
            curve: raw.curve,
        }
    }

    fn funding(&mut self, raw: Option<&RawFundingBand>, weight: f64) -> FundingBand {
        let Some(raw) = raw else {
            if weight > 0.0 {
                self.error(
                    "traction.funding",
                    format!("missing; weights.funding is {weight}, so its band is needed"),
                );
            }
            return FundingBand {
                ideal_min_usd: 1.0,
                ideal_max_usd: 1.0,
                ceiling_usd: 2.0,
            };
        };
        if !raw.ideal_min_usd.is_finite() || raw.ideal_min_usd <= 0.0 {
            self.error(
                "traction.funding.ideal_min_usd",
                format!("must be a finite number > 0, got {}", raw.ideal_min_usd),
            );
        }
        if !raw.ideal_max_usd.is_finite() || raw.ideal_max_usd < raw.ideal_min_usd {
            self.error(
                "traction.funding.ideal_max_usd",
                format!(
                    "must be a finite number >= ideal_min_usd ({}), got {}",
                    raw.ideal_min_usd, raw.ideal_max_usd
                ),
            );
        }
        if !raw.ceiling_usd.is_finite() || raw.ceiling_usd <= raw.ideal_max_usd {
            self.error(
                "traction.funding.ceiling_usd",
                format!(
                    "must be a finite number > ideal_max_usd ({}), got {}",
                    raw.ideal_max_usd, raw.ceiling_usd
                ),
            );
        }
        FundingBand {
            ideal_min_usd: raw.ideal_min_usd,
            ideal_max_usd: raw.ideal_max_usd,
            ceiling_usd: raw.ceiling_usd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        version = "2026.11"
        [weights]
        sector = 1
        [sectors]
        preferences = { fintech = 1.0 }
    "#;

    fn errors(text: &str) -> Vec<String> {
        match Model::parse(text) {
            Ok(model) => panic!("expected errors, got model {}", model.version),
            Err(error) => error
                .field_errors()
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    #[test]
    fn the_shipped_default_model_is_valid() {
        let text = include_str!("../thesis.toml");
        let model = Model::parse(text).expect("thesis.toml is valid");
        assert!(model.version.starts_with("2026.11-1+"), "{}", model.version);
        assert!(Feature::ALL.iter().all(|f| model.weight(*f) > 0.0));
    }

    #[test]
    fn a_minimal_model_loads() {
        let model = Model::parse(MINIMAL).unwrap();
        assert_eq!(model.total_weight, 1.0);
        assert_eq!(model.sectors.get("fintech"), Some(1.0));
    }

    #[test]
    fn version_carries_a_content_hash() {
        let a = Model::parse(MINIMAL).unwrap();
        let reformatted = format!(
            "# a comment\n{}",
            MINIMAL.replace("sector = 1", "sector   =   1.0")
        );
        assert_eq!(Model::parse(&reformatted).unwrap().version, a.version);
        let different = MINIMAL.replace("fintech = 1.0", "fintech = 0.9");
        let b = Model::parse(&different).unwrap();
        assert_ne!(a.version, b.version);
        assert!(a.version.starts_with("2026.11+") && b.version.starts_with("2026.11+"));
        assert_eq!(a.version.len(), "2026.11+".len() + 12);
    }

    #[test]
    fn negative_weight_names_the_field() {
        let text = MINIMAL.replace("sector = 1", "sector = 1\nstage = -2");
        assert_eq!(
            errors(&text),
            ["weights.stage: must be a finite number >= 0, got -2"]
        );
    }

    #[test]
    fn all_zero_weights_are_refused() {
        let text = MINIMAL.replace("sector = 1", "sector = 0");
        assert_eq!(errors(&text), ["weights: at least one weight must be > 0"]);
    }

    #[test]
    fn unknown_stage_names_the_field() {
        let text = format!("{MINIMAL}\n[stages]\npreferences = {{ seed = 1.0, series_z = 0.5 }}\n");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("stages.preferences.series_z: unknown stage \"series_z\""),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let text = MINIMAL.replace("sector = 1", "sector = 1\nstarz = 3");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("weights.starz: unknown field `starz`"),
            "{errors:?}"
        );
        assert!(errors[0].contains("(line 5)"), "{errors:?}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = MINIMAL.replace("sector = 1", "sector = \"high\"");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("weights.sector: "), "{errors:?}");
    }

    #[test]
    fn unknown_curve_names_the_field() {
        let text = MINIMAL.replace(
            "sector = 1",
            "sector = 1\nstars = 1\n[traction]\nstars = { target = 10, curve = \"cubic\" }",
        );
        let errors = errors(&text);
        assert!(
            errors[0].starts_with("traction.stars.curve: unknown variant `cubic`"),
            "{errors:?}"
        );
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let errors = errors("version = \"x\"\n[weights\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("line 2"), "{errors:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            version = "bad version!"
            [weights]
            stars = 1
            funding = 1
            [geographies]
            default = 1.5
            preferences = { usa = 1.0, XX = 0.5 }
            [traction]
            funding = { ideal_min_usd = 1000, ideal_max_usd = 500, ceiling_usd = 400 }
            [filters]
            excluded_stages = ["seed", "series_q"]
            max_funding_usd = -1
        "#;
        let fields: Vec<String> = match Model::parse(text) {
            Err(e) => e.field_errors().iter().map(|e| e.field.clone()).collect(),
            Ok(_) => panic!("model is invalid"),
        };
        assert_eq!(
            fields,
            [
                "version",
                "geographies.default",
                "geographies.preferences.XX",
                "geographies.preferences.usa",
                "traction.stars",
                "traction.funding.ideal_max_usd",
                "traction.funding.ceiling_usd",
                "filters.excluded_stages[1]",
                "filters.max_funding_usd",
            ]
        );
    }

    #[test]
    fn ramps_need_target_above_floor() {
        let text = MINIMAL.replace(
            "sector = 1",
            "sector = 1\ncontributors = 1\n[traction]\ncontributors = { floor = 10, target = 10 }",
        );
        assert_eq!(
            errors(&text),
            [
                "traction.contributors.target: must be a finite number greater than floor (10), got 10"
            ]
        );
    }

    #[test]
    fn stage_list_is_sorted_for_lookup() {
        let mut sorted = STAGES.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, STAGES);
    }
}
