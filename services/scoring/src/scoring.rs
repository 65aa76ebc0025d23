//! The scoring function: `Model x Features -> Scored`, pure and
//! deterministic.
//!
//! Each feature `f` gets a value `v_f` in [0, 1] (its preference or where it
//! sits on its traction threshold; an unknown signal is 0) and the model's
//! weight `w_f >= 0`. Its contribution in points is
//!
//! ```text
//! c_f = 100 * w_f * v_f / sum(w)
//! ```
//!
//! and the score is `sum(c_f)`, so the score is in [0, 100] and the
//! contributions add up to it exactly. A deal failing any hard filter scores
//! 0: its contributions keep their values and weights, to show what the deal
//! would have scored, but add 0 points.

use dealmesh_proto::v1::FeatureContribution;

use crate::features::{Feature, Features};
use crate::model::Model;

/// A score with its explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub score: f64,
    pub contributions: Vec<Contribution>,
    pub failed_filters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub feature: Feature,
    pub value: f64,
    pub weight: f64,
    pub points: f64,
    pub explanation: String,
}

impl Contribution {
    pub fn to_proto(&self) -> FeatureContribution {
        FeatureContribution {
            feature: self.feature.name().to_owned(),
            value: self.value,
            weight: self.weight,
            contribution: self.points,
            explanation: self.explanation.clone(),
        }
    }
}

/// Scores `features` against `model`.
pub fn score(model: &Model, features: &Features) -> Scored {
    let failed_filters = failed_filters(model, features);
    let passed = failed_filters.is_empty();
    let mut contributions = Vec::with_capacity(Feature::COUNT);
    let mut total = 0.0;
    for feature in Feature::ALL {
        let weight = model.weight(feature);
        let (value, mut explanation) = evaluate(model, feature, features);
        let points = if passed {
            100.0 * weight * value / model.total_weight
        } else {
            0.0
        };
        if !passed {
            explanation.push_str("; no points: a hard filter failed");
        } else if weight == 0.0 {
            explanation.push_str("; weight 0 in this model");
        }
        total += points;
        contributions.push(Contribution {
            feature,
            value,
            weight,
            points,
            explanation,
        });
    }
    Scored {
        // Guards against rounding drift past the documented range.
        score: total.clamp(0.0, 100.0),
        contributions,
        failed_filters,
    }
}

/// The feature's normalized value and why.
fn evaluate(model: &Model, feature: Feature, f: &Features) -> (f64, String) {
    match feature {
        Feature::Sector => sector(model, f),
        Feature::Stage => match &f.stage {
            None => (0.0, "stage unknown (no funding round)".into()),
            Some(stage) => match model.stages.get(stage) {
                Some(p) => (p, format!("stage {stage:?}: thesis preference {p}")),
                None if crate::model::is_stage(stage) => (
                    model.stages.default,
                    format!(
                        "stage {stage:?} not listed in the thesis: default {}",
                        model.stages.default
                    ),
                ),
                None => (
                    0.0,
                    format!("stage {stage:?} is not a known investment type"),
                ),
            },
        },
        Feature::Geography => match (&f.country, &f.unrecognized_country) {
            (Some(code), _) => match model.geographies.get(code) {
                Some(p) => (p, format!("country {code}: thesis preference {p}")),
                None => (
                    model.geographies.default,
                    format!(
                        "country {code} not listed in the thesis: default {}",
                        model.geographies.default
                    ),
                ),
            },
            (None, Some(given)) => (0.0, format!("country {given:?} not recognized")),
            (None, None) => (0.0, "country unknown".into()),
        },
        Feature::Stars => ramp(f.stars, &model.stars, "stars", "no GitHub signals"),
        Feature::StarVelocity => ramp(
            f.star_velocity_30d,
            &model.star_velocity,
            "stars/day over 30 days",
            "no GitHub signals",
        ),
        Feature::Contributors => ramp(
            f.contributors,
            &model.contributors,
            "contributors",
            "no GitHub signals",
        ),
        Feature::CommitActivity => ramp(
            f.commits_per_week,
            &model.commit_activity,
            "commits/week over 12 weeks",
            "no commit history",
        ),
        Feature::Funding => match f.funding_total_usd {
            None => (0.0, "funding unknown (no Crunchbase signals)".into()),
            Some(usd) => {
                let band = &model.funding;
                let v = band.normalize(usd);
                (
                    v,
                    format!(
                        "${usd:.0} raised; ideal ${:.0}-${:.0}, nothing above ${:.0}",
                        band.ideal_min_usd, band.ideal_max_usd, band.ceiling_usd
                    ),
                )
            }
        },
    }
}

fn sector(model: &Model, f: &Features) -> (f64, String) {
    // The analysis' sector first; Crunchbase categories when the thesis
    // says nothing about it.
    if let Some(sector) = &f.sector
        && let Some(p) = model.sectors.get(sector)
    {
        return (p, format!("sector {sector:?}: thesis preference {p}"));
    }
    let best = f
        .categories
        .iter()
        .filter_map(|c| model.sectors.get(c).map(|p| (c, p)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((category, p)) = best {
        return (p, format!("category {category:?}: thesis preference {p}"));
    }
    match &f.sector {
        Some(sector) => (
            model.sectors.default,
            format!(
                "sector {sector:?} not listed in the thesis: default {}",
                model.sectors.default
            ),
        ),
        None if !f.categories.is_empty() => (
            model.sectors.default,
            format!(
                "categories not listed in the thesis: default {}",
                model.sectors.default
            ),
        ),
        None => (0.0, "sector unknown (no analysis)".into()),
    }
}

fn ramp(value: Option<f64>, ramp: &crate::model::Ramp, what: &str, missing: &str) -> (f64, String) {
    match value {
        None => (0.0, missing.to_owned()),
        Some(x) => {
            let v = ramp.normalize(x);
            (
                v,
                format!(
                    "{} {what}; 0 at {}, full marks at {}",
                    trim_number(x),
                    trim_number(ramp.floor),
                    trim_number(ramp.target)
                ),
            )
        }
    }
}

fn trim_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

fn failed_filters(model: &Model, f: &Features) -> Vec<String> {
    let filters = &model.filters;
    let mut failed = Vec::new();
    let mut sectors = f.sector.iter().chain(f.categories.iter());
    if let Some(sector) = sectors.find(|s| filters.excluded_sectors.contains(s)) {
        failed.push(format!("excluded_sectors: sector {sector:?} is excluded"));
    }
    if let Some(stage) = &f.stage
        && filters.excluded_stages.contains(stage)
    {
        failed.push(format!("excluded_stages: stage {stage:?} is excluded"));
    }
    if let (Some(max), Some(usd)) = (filters.max_funding_usd, f.funding_total_usd)
        && usd > max
    {
        failed.push(format!(
            "max_funding_usd: ${usd:.0} raised is above ${max:.0}"
        ));
    }
    if !filters.required_countries.is_empty() {
        match &f.country {
            Some(code) if filters.required_countries.contains(code) => {}
            Some(code) => failed.push(format!(
                "required_countries: {code} is not one of {}",
                filters.required_countries.join(", ")
            )),
            None => failed.push("required_countries: country unknown".to_owned()),
        }
    }
    if filters.exclude_closed && f.operating_status.as_deref() == Some("closed") {
        failed.push("exclude_closed: the company is closed".to_owned());
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    const THESIS: &str = r#"
        version = "test-1"
        [weights]
        sector = 25
        stage = 15
        geography = 10
        stars = 15
        star_velocity = 10
        contributors = 10
        commit_activity = 10
        funding = 5
        [sectors]
        default = 0.1
        preferences = { developer-tools = 1.0, climate-software = 0.8 }
        [stages]
        default = 0.0
        preferences = { pre_seed = 0.9, seed = 1.0, series_a = 0.6 }
        [geographies]
        default = 0.3
        preferences = { US = 1.0, DE = 0.9 }
        [traction]
        stars = { floor = 50, target = 10000, curve = "log" }
        star_velocity = { target = 20 }
        contributors = { floor = 1, target = 40 }
        commit_activity = { target = 50 }
        funding = { ideal_min_usd = 500000, ideal_max_usd = 5000000, ceiling_usd = 30000000 }
        [filters]
        excluded_sectors = ["gambling"]
        max_funding_usd = 50000000
        exclude_closed = true
    "#;

    fn model() -> Model {
        Model::parse(THESIS).expect("test thesis is valid")
    }

    fn fit() -> Features {
        Features {
            sector: Some("developer-tools".into()),
            stage: Some("seed".into()),
            country: Some("US".into()),
            stars: Some(12_000.0),
            star_velocity_30d: Some(25.0),
            contributors: Some(60.0),
            commits_per_week: Some(80.0),
            funding_total_usd: Some(2_000_000.0),
            operating_status: Some("active".into()),
            ..Default::default()
        }
    }

    fn misfit() -> Features {
        Features {
            sector: Some("insurance".into()),
            stage: Some("series_c".into()),
            country: Some("FR".into()),
            stars: Some(60.0),
            star_velocity_30d: Some(0.1),
            contributors: Some(2.0),
            commits_per_week: Some(1.0),
            funding_total_usd: Some(40_000_000.0),
            ..Default::default()
        }
    }

    fn sum(scored: &Scored) -> f64 {
        scored.contributions.iter().map(|c| c.points).sum()
    }

    #[test]
    fn a_deal_matching_the_thesis_scores_full_marks() {
        let scored = score(&model(), &fit());
        assert!(scored.failed_filters.is_empty());
        assert!((scored.score - 100.0).abs() < 1e-9, "{}", scored.score);
    }

    #[test]
    fn a_deal_off_thesis_scores_low() {
        let scored = score(&model(), &misfit());
        assert!(
            scored.failed_filters.is_empty(),
            "{:?}",
            scored.failed_filters
        );
        assert!(scored.score < 20.0, "{}", scored.score);
        assert!(scored.score > 0.0);
    }

    #[test]
    fn contributions_add_up_to_the_score_and_follow_the_formula() {
        let m = model();
        let mut f = fit();
        f.stage = Some("series_a".into());
        f.country = Some("GB".into());
        f.stars = Some(500.0);
        let scored = score(&m, &f);
        assert!((sum(&scored) - scored.score).abs() < 1e-9);
        let stage = &scored.contributions[Feature::Stage as usize];
        assert_eq!(stage.value, 0.6);
        assert!((stage.points - 100.0 * 15.0 * 0.6 / 100.0).abs() < 1e-9);
        let geo = &scored.contributions[Feature::Geography as usize];
        assert_eq!(geo.value, 0.3);
        assert!(
            geo.explanation.contains("GB not listed"),
            "{}",
            geo.explanation
        );
        let stars = &scored.contributions[Feature::Stars as usize];
        let expected = (450.0f64).ln_1p() / (9950.0f64).ln_1p();
        assert!((stars.value - expected).abs() < 1e-12);
        assert_eq!(scored.contributions.len(), Feature::COUNT);
    }

    #[test]
    fn failing_a_hard_filter_scores_zero_and_says_which() {
        let m = model();
        let mut f = fit();
        f.sector = Some("gambling".into());
        f.funding_total_usd = Some(60_000_000.0);
        let scored = score(&m, &f);
        assert_eq!(scored.score, 0.0);
        assert_eq!(
            scored.failed_filters.len(),
            2,
            "{:?}",
            scored.failed_filters
        );
        assert!(scored.failed_filters[0].starts_with("excluded_sectors"));
        assert!(scored.failed_filters[1].starts_with("max_funding_usd"));
        assert_eq!(sum(&scored), 0.0);
        // The values still show what the deal would have been worth.
        assert_eq!(scored.contributions[Feature::Stage as usize].value, 1.0);

        let mut closed = fit();
        closed.operating_status = Some("closed".into());
        assert_eq!(
            score(&m, &closed).failed_filters,
            ["exclude_closed: the company is closed"]
        );
    }

    #[test]
    fn required_countries_fail_unknown_and_other_countries() {
        let text = THESIS.replace(
            "exclude_closed = true",
            "exclude_closed = true\nrequired_countries = [\"US\", \"DE\"]",
        );
        let m = Model::parse(&text).unwrap();
        assert!(score(&m, &fit()).failed_filters.is_empty());
        let mut f = fit();
        f.country = Some("FR".into());
        assert_eq!(score(&m, &f).score, 0.0);
        f.country = None;
        assert_eq!(
            score(&m, &f).failed_filters,
            ["required_countries: country unknown"]
        );
    }

    #[test]
    fn unknown_signals_add_nothing() {
        let scored = score(&model(), &Features::default());
        assert_eq!(scored.score, 0.0);
        assert!(scored.failed_filters.is_empty());
        assert_eq!(
            scored.contributions[Feature::Stars as usize].explanation,
            "no GitHub signals"
        );
    }

    #[test]
    fn weights_change_the_ranking() {
        // A: strong traction, off-thesis sector. B: on-thesis sector, no traction.
        let a = Features {
            sector: Some("insurance".into()),
            stars: Some(10_000.0),
            star_velocity_30d: Some(20.0),
            contributors: Some(40.0),
            commits_per_week: Some(50.0),
            ..Default::default()
        };
        let b = Features {
            sector: Some("developer-tools".into()),
            stage: Some("seed".into()),
            country: Some("US".into()),
            ..Default::default()
        };
        let traction_heavy = model();
        assert!(score(&traction_heavy, &a).score < score(&traction_heavy, &b).score);
        let text = THESIS
            .replace("stars = 15", "stars = 60")
            .replace("commit_activity = 10", "commit_activity = 60");
        let more_traction = Model::parse(&text).unwrap();
        assert!(score(&more_traction, &a).score > score(&more_traction, &b).score);
    }

    #[test]
    fn categories_stand_in_for_an_unlisted_sector() {
        let mut f = fit();
        f.sector = Some("energy".into());
        f.categories = vec!["software".into(), "climate-software".into()];
        let c = &score(&model(), &f).contributions[Feature::Sector as usize];
        assert_eq!(c.value, 0.8);
        assert!(c.explanation.contains("climate-software"));
    }

    #[test]
    fn funding_band_rises_holds_and_falls() {
        let band = model().funding;
        assert_eq!(band.normalize(0.0), 0.0);
        assert_eq!(band.normalize(250_000.0), 0.5);
        assert_eq!(band.normalize(3_000_000.0), 1.0);
        assert_eq!(band.normalize(17_500_000.0), 0.5);
        assert_eq!(band.normalize(90_000_000.0), 0.0);
    }

    #[test]
    fn scoring_is_deterministic() {
        let m = model();
        assert_eq!(score(&m, &misfit()), score(&m, &misfit()));
    }
}
