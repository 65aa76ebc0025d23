//! The built-in analyzer: keyword and threshold rules over the description,
//! GitHub topics and Crunchbase categories. The same input always gives the
//! same analysis, and it needs no key and no network, so the whole mesh runs
//! without an LLM. Its output says so: analyzer `BUILTIN`, model
//! `builtin-v1`.

use chrono::Utc;
use dealmesh_proto::v1::{Analysis, AnalyzerKind};

use super::{AnalysisInput, MAX_RISKS, MAX_SUMMARY_CHARS};
use crate::provider::truncate_chars;
use crate::signals::provenance;

pub const MODEL: &str = "builtin-v1";
pub const SOURCE: &str = "builtin";

/// Sector keyword rules, in priority order (the first wins a tie).
const SECTOR_RULES: &[(&str, &[&str])] = &[
    (
        "climate-software",
        &[
            "solar",
            "grid",
            "carbon",
            "climate",
            "emissions",
            "renewable",
            "renewables",
            "clean energy",
            "utilities",
            "utility",
            "decarbonization",
            "battery",
            "batteries",
        ],
    ),
    (
        "ai-ml",
        &[
            "ai",
            "machine learning",
            "llm",
            "llms",
            "artificial intelligence",
            "deep learning",
            "neural",
            "inference",
            "generative",
            "computer vision",
        ],
    ),
    (
        "fintech",
        &[
            "payments",
            "payment",
            "banking",
            "bank",
            "fintech",
            "lending",
            "credit",
            "invoicing",
            "accounting",
            "finance",
            "financial",
            "trading",
            "crypto",
        ],
    ),
    (
        "insurtech",
        &["insurance", "underwriting", "claims", "insurtech"],
    ),
    (
        "healthtech",
        &[
            "health",
            "healthcare",
            "patient",
            "patients",
            "clinic",
            "clinical",
            "medical",
            "hospital",
            "telehealth",
        ],
    ),
    (
        "biotech",
        &[
            "biotech",
            "drug",
            "genomics",
            "protein",
            "therapeutics",
            "biology",
        ],
    ),
    (
        "security",
        &[
            "security",
            "vulnerability",
            "vulnerabilities",
            "authentication",
            "identity",
            "encryption",
            "threat",
            "zero trust",
            "cybersecurity",
        ],
    ),
    (
        "devtools",
        &[
            "developer",
            "developers",
            "sdk",
            "cli",
            "ide",
            "compiler",
            "devops",
            "ci",
            "testing",
            "git",
            "developer tools",
            "programming",
        ],
    ),
    (
        "infrastructure",
        &[
            "kubernetes",
            "cloud",
            "database",
            "infrastructure",
            "serverless",
            "observability",
            "edge",
            "networking",
            "storage",
            "monitoring",
        ],
    ),
    (
        "data",
        &[
            "analytics",
            "data",
            "etl",
            "warehouse",
            "dashboards",
            "business intelligence",
        ],
    ),
    (
        "edtech",
        &[
            "education",
            "students",
            "school",
            "schools",
            "courses",
            "edtech",
        ],
    ),
    (
        "ecommerce",
        &[
            "ecommerce",
            "e-commerce",
            "shop",
            "shops",
            "retail",
            "checkout",
            "merchants",
        ],
    ),
    (
        "logistics",
        &[
            "logistics",
            "shipping",
            "freight",
            "supply chain",
            "fleet",
            "delivery",
        ],
    ),
    (
        "mobility",
        &["mobility", "vehicles", "vehicle", "ev", "cars", "transport"],
    ),
    (
        "proptech",
        &["real estate", "property", "rental", "construction"],
    ),
    (
        "hr-tech",
        &["hiring", "recruiting", "payroll", "hr", "talent"],
    ),
    ("legaltech", &["legal", "contracts", "law", "lawyers"]),
    (
        "agtech",
        &["agriculture", "farm", "farms", "farming", "crop", "crops"],
    ),
    ("energy", &["energy", "hydrogen", "nuclear", "oil", "gas"]),
    ("gaming", &["game", "games", "gaming"]),
    (
        "media",
        &["media", "video", "music", "podcast", "news", "streaming"],
    ),
    (
        "hardware",
        &[
            "hardware",
            "chip",
            "chips",
            "semiconductor",
            "device",
            "devices",
            "sensors",
            "iot",
        ],
    ),
    (
        "robotics",
        &["robot", "robots", "robotics", "drone", "drones"],
    ),
    (
        "consumer",
        &["consumer", "social", "dating", "fitness", "lifestyle"],
    ),
];

/// The analysis of `input`, from rules alone.
pub fn analyze(input: &AnalysisInput<'_>) -> Analysis {
    let corpus = corpus(input);
    let sector = sector(&corpus);
    Analysis {
        provenance: Some(provenance(SOURCE, Utc::now(), "")),
        analyzer: AnalyzerKind::Builtin as i32,
        model: MODEL.to_owned(),
        summary: summary(input),
        business_model: business_model(&corpus, sector, input).to_owned(),
        sector: sector.to_owned(),
        risks: risks(input, sector),
        prompt_version: MODEL.to_owned(),
    }
}

/// Every piece of text about the company, lower-cased, as words separated by
/// single spaces and padded with spaces so `" ai "` matches whole words.
fn corpus(input: &AnalysisInput<'_>) -> String {
    let mut parts: Vec<&str> = vec![input.name, input.description];
    if let Some(github) = input.github {
        parts.push(&github.description);
        parts.extend(github.topics.iter().map(String::as_str));
    }
    if let Some(crunchbase) = input.crunchbase {
        parts.push(&crunchbase.short_description);
        parts.extend(crunchbase.categories.iter().map(String::as_str));
    }
    let mut text = String::from(" ");
    for part in parts {
        for word in part
            .to_lowercase()
            .split(|c: char| !(c.is_alphanumeric() || c == '-'))
            .filter(|w| !w.is_empty())
        {
            // Topics are written `clean-energy`; read them as words too.
            text.push_str(word);
            text.push(' ');
            if word.contains('-') {
                text.push_str(&word.replace('-', " "));
                text.push(' ');
            }
        }
    }
    text
}

fn hits(corpus: &str, keywords: &[&str]) -> usize {
    keywords
        .iter()
        .map(|k| corpus.matches(&format!(" {k} ")).count())
        .sum()
}

fn sector(corpus: &str) -> &'static str {
    let mut best = ("other", 0);
    for (sector, keywords) in SECTOR_RULES {
        let score = hits(corpus, keywords);
        if score > best.1 {
            best = (sector, score);
        }
    }
    best.0
}

fn business_model(corpus: &str, sector: &str, input: &AnalysisInput<'_>) -> &'static str {
    let open_source = hits(corpus, &["open-source", "open source", "opensource"]) > 0
        || input
            .github
            .is_some_and(|g| !g.license.is_empty() && g.stars > 0);
    if hits(corpus, &["marketplace", "marketplaces"]) > 0 {
        "marketplace"
    } else if open_source {
        "open source with a commercial offering"
    } else if hits(corpus, &["api", "apis", "usage-based"]) > 0 {
        "usage-based API"
    } else if matches!(sector, "hardware" | "robotics") {
        "hardware sales"
    } else if sector == "consumer" || sector == "gaming" {
        "consumer subscription"
    } else if hits(
        corpus,
        &[
            "software",
            "saas",
            "platform",
            "utilities",
            "enterprises",
            "businesses",
            "teams",
            "companies",
        ],
    ) > 0
    {
        "B2B SaaS"
    } else {
        "not determined from public signals"
    }
}

fn summary(input: &AnalysisInput<'_>) -> String {
    let description = [
        input.description,
        input
            .crunchbase
            .map_or("", |c| c.short_description.as_str()),
        input.github.map_or("", |g| g.description.as_str()),
    ]
    .into_iter()
    .map(str::trim)
    .find(|d| !d.is_empty());
    let mut summary = match description {
        Some(text) => first_sentence(text, 300),
        None => format!("{}: no description available.", input.name.trim()),
    };
    if let Some(github) = input.github {
        let what = if github.repo.is_empty() {
            format!("GitHub organization {}", github.owner)
        } else {
            format!("GitHub {}/{}", github.owner, github.repo)
        };
        summary.push_str(&format!(
            " {what}: {} stars, {} forks, {} contributors.",
            github.stars, github.forks, github.contributors
        ));
    }
    if let Some(crunchbase) = input.crunchbase
        && let Some(total) = &crunchbase.funding_total
    {
        summary.push_str(&format!(
            " Raised {} {} in total",
            total.currency, total.value
        ));
        if let Some(round) = &crunchbase.last_round {
            summary.push_str(&format!(
                ", last round {} on {}",
                round.investment_type, round.announced_on
            ));
        }
        summary.push('.');
    }
    truncate_chars(&summary, MAX_SUMMARY_CHARS - 1)
}

fn first_sentence(text: &str, max: usize) -> String {
    let cut = text
        .char_indices()
        .find(|(i, c)| {
            matches!(c, '.' | '!' | '?')
                && text[i + c.len_utf8()..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace)
        })
        .map_or(text, |(i, c)| &text[..i + c.len_utf8()]);
    let mut sentence = truncate_chars(cut.trim(), max);
    if !sentence.ends_with(['.', '!', '?', '…']) {
        sentence.push('.');
    }
    sentence
}

fn risks(input: &AnalysisInput<'_>, sector: &str) -> Vec<String> {
    let mut risks = Vec::new();
    if input.github.is_none() && input.crunchbase.is_none() {
        risks.push("little public signal: no GitHub or Crunchbase data".to_owned());
    }
    if input.description.trim().is_empty() {
        risks.push("no company description".to_owned());
    }
    if let Some(github) = input.github {
        if (1..=2).contains(&github.contributors) {
            risks.push("small contributor base (key-person risk)".to_owned());
        }
        let recent = github.weekly_commits.iter().rev().take(12);
        if !github.weekly_commits.is_empty() && recent.sum::<i64>() == 0 {
            risks.push("no commits in the last 12 weeks".to_owned());
        }
        if github.stars < 50 {
            risks.push("limited developer traction (fewer than 50 stars)".to_owned());
        }
    }
    if let Some(crunchbase) = input.crunchbase {
        if crunchbase
            .funding_total
            .as_ref()
            .is_none_or(|m| m.value_usd <= 0 && m.value <= 0)
        {
            risks.push("no disclosed funding".to_owned());
        }
        if crunchbase.operating_status == "closed" {
            risks.push("reported as closed".to_owned());
        }
        if crunchbase.headcount_band == "c_00001_00010" {
            risks.push("very small team (1-10 people)".to_owned());
        }
    }
    if matches!(
        sector,
        "climate-software" | "energy" | "healthtech" | "biotech" | "fintech" | "insurtech"
    ) {
        risks.push("regulated buyers and long sales cycles".to_owned());
    }
    risks.truncate(MAX_RISKS);
    risks
}

#[cfg(test)]
mod tests {
    use super::*;
    use dealmesh_proto::v1::{CrunchbaseSignals, GithubSignals, Money};

    fn input<'a>(
        description: &'a str,
        github: Option<&'a GithubSignals>,
        crunchbase: Option<&'a CrunchbaseSignals>,
    ) -> AnalysisInput<'a> {
        AnalysisInput {
            name: "Acme",
            website: "acme.io",
            description,
            github,
            crunchbase,
        }
    }

    #[test]
    fn climate_company_reads_as_climate_software_saas() {
        let crunchbase = CrunchbaseSignals {
            categories: vec!["Clean Energy".into(), "Software".into()],
            funding_total: Some(Money {
                value: 7_500_000,
                currency: "EUR".into(),
                value_usd: 8_100_000,
            }),
            ..Default::default()
        };
        let analysis = analyze(&input(
            "Lumen Grid builds forecasting software that lets utilities balance rooftop solar on the distribution grid. More text.",
            None,
            Some(&crunchbase),
        ));
        assert_eq!(analysis.sector, "climate-software");
        assert_eq!(analysis.business_model, "B2B SaaS");
        assert_eq!(analysis.analyzer, AnalyzerKind::Builtin as i32);
        assert_eq!(analysis.model, MODEL);
        assert!(
            analysis
                .summary
                .starts_with("Lumen Grid builds forecasting software")
        );
        assert!(!analysis.summary.contains("More text"));
        assert!(
            analysis.summary.contains("Raised EUR 7500000"),
            "{}",
            analysis.summary
        );
        assert!(!analysis.risks.iter().any(|r| r.contains("funding")));
    }

    #[test]
    fn open_source_devtool_with_one_contributor() {
        let github = GithubSignals {
            owner: "acme".into(),
            repo: "lint".into(),
            stars: 12,
            contributors: 1,
            topics: vec!["developer-tools".into(), "cli".into(), "open-source".into()],
            weekly_commits: vec![3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        let analysis = analyze(&input("A linter for developers.", Some(&github), None));
        assert_eq!(analysis.sector, "devtools");
        assert_eq!(
            analysis.business_model,
            "open source with a commercial offering"
        );
        assert!(
            analysis
                .risks
                .contains(&"small contributor base (key-person risk)".into())
        );
        assert!(
            analysis
                .risks
                .contains(&"no commits in the last 12 weeks".into())
        );
        assert!(analysis.summary.contains("GitHub acme/lint: 12 stars"));
    }

    #[test]
    fn nothing_known_still_gives_valid_fields() {
        let analysis = analyze(&input("", None, None));
        assert_eq!(analysis.sector, "other");
        assert_eq!(analysis.summary, "Acme: no description available.");
        let validated = super::super::validate(super::super::AnalysisOutput {
            summary: analysis.summary.clone(),
            sector: analysis.sector.clone(),
            business_model: analysis.business_model.clone(),
            risks: analysis.risks.clone(),
        });
        assert!(validated.is_ok());
    }

    #[test]
    fn same_input_same_analysis() {
        let a = analyze(&input("Payments API for merchants.", None, None));
        let b = analyze(&input("Payments API for merchants.", None, None));
        assert_eq!(
            (a.summary, a.sector, a.business_model, a.risks),
            (b.summary, b.sector, b.business_model, b.risks)
        );
    }
}
