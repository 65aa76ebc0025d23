//! Canonical company keys and `deal_id` derivation: the same company seen by
//! several sources (website, GitHub owner or bare name) must map to one deal.
//!
//! The key is, in order of strength:
//! 1. the registrable domain of the website, per the public suffix list
//!    (ICANN *and* private sections, so `acme.github.io` is its own company),
//! 2. else the GitHub owner login,
//! 3. else the normalized company name.
//!
//! `deal_id` is a UUIDv5 over the key's canonical string in
//! [`DEAL_ID_NAMESPACE`]. Every rule here feeds persisted ids: changing any of
//! them (or upgrading `psl` past a list change that affects a host) re-keys
//! existing deals, so treat edits as data migrations.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use url::{Host, Url};
use uuid::Uuid;

/// Namespace for `deal_id` UUIDv5s. NEVER CHANGE THIS: every stored deal id
/// is derived from it. It is itself
/// `uuid5(NAMESPACE_URL, "https://github.com/dealmesh/dealmesh/company-key")`
/// (b9f4e745-ac8a-56a6-b13e-9f805abafdc8), pinned by a test.
pub const DEAL_ID_NAMESPACE: Uuid = Uuid::from_u128(0xb9f4_e745_ac8a_56a6_b13e_9f80_5aba_fdc8);

const MAX_WEBSITE_BYTES: usize = 2048;
const MAX_NAME_CHARS: usize = 300;
const MAX_HOST_BYTES: usize = 253;
const MAX_LABEL_BYTES: usize = 63;
const MAX_GITHUB_LOGIN: usize = 39;

/// Which identity signal a key came from. Order = strength.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Domain,
    GithubOwner,
    Name,
}

impl KeyKind {
    // Part of the hashed canonical string: never rename.
    fn prefix(self) -> &'static str {
        match self {
            KeyKind::Domain => "domain",
            KeyKind::GithubOwner => "github",
            KeyKind::Name => "name",
        }
    }
}

/// A normalized company identity. Only obtainable through [`CompanyKey::derive`],
/// so `value` is always normalized for its `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompanyKey {
    kind: KeyKind,
    value: String,
}

impl CompanyKey {
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// "domain:acme.co.uk", "github:rust-lang", "name:acme robotics"
    pub fn as_canonical_string(&self) -> String {
        format!("{}:{}", self.kind.prefix(), self.value)
    }

    /// UUIDv5 in [`DEAL_ID_NAMESPACE`] over [`Self::as_canonical_string`].
    pub fn deal_id(&self) -> Uuid {
        Uuid::new_v5(&DEAL_ID_NAMESPACE, self.as_canonical_string().as_bytes())
    }

    /// The key of a company known by its website, from the website's
    /// [`registrable_domain`].
    pub fn from_registrable_domain(domain: String) -> CompanyKey {
        CompanyKey {
            kind: KeyKind::Domain,
            value: domain,
        }
    }

    /// Derive from the raw inputs; website preferred, then GitHub owner, then name.
    ///
    /// Empty or whitespace-only inputs count as absent. The strongest present
    /// input decides: if it is invalid that is an error (so callers can report
    /// the bad field) rather than a silent fall back to a weaker signal, and
    /// weaker inputs are not inspected at all.
    pub fn derive(
        website: Option<&str>,
        github_owner: Option<&str>,
        name: Option<&str>,
    ) -> Result<CompanyKey, KeyError> {
        let (kind, value) = if let Some(website) = present(website) {
            (KeyKind::Domain, registrable_domain(website)?)
        } else if let Some(owner) = present(github_owner) {
            (KeyKind::GithubOwner, normalize_github_owner(owner)?)
        } else if let Some(name) = present(name) {
            (KeyKind::Name, normalize_name(name)?)
        } else {
            return Err(KeyError::NoIdentity);
        };
        Ok(CompanyKey { kind, value })
    }
}

fn present(input: Option<&str>) -> Option<&str> {
    input.map(str::trim).filter(|s| !s.is_empty())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("website {website:?} {reason}")]
    InvalidWebsite { website: String, reason: String },
    #[error("website {website:?} has no registrable domain: {reason}")]
    NoRegistrableDomain { website: String, reason: String },
    #[error("website {website:?} is a profile page on {platform}, not the company's own site")]
    ProfileWebsite { website: String, platform: String },
    #[error("github owner {owner:?} {reason}")]
    InvalidGithubOwner { owner: String, reason: String },
    #[error("name is empty")]
    EmptyName,
    #[error("name is {len} characters, over the {max} limit", max = MAX_NAME_CHARS)]
    NameTooLong { len: usize },
    #[error("name {0:?} has nothing left after normalization")]
    NameNormalizesToEmpty(String),
    #[error("no website, github owner or name to identify the company")]
    NoIdentity,
}

// ---------------------------------------------------------------------------
// Website -> registrable domain
// ---------------------------------------------------------------------------

/// Platforms whose registrable domain names the platform, not the company:
/// keying "linkedin.com/company/acme" by `linkedin.com` would merge every
/// company that lists a profile as its website into one deal. The bare site
/// (e.g. "https://github.com") still keys as that company.
const PROFILE_PLATFORMS: &[&str] = &[
    "angel.co",
    "bitbucket.org",
    "crunchbase.com",
    "facebook.com",
    "github.com",
    "gitlab.com",
    "instagram.com",
    "linkedin.com",
    "linktr.ee",
    "medium.com",
    "producthunt.com",
    "tiktok.com",
    "twitter.com",
    "wellfound.com",
    "x.com",
    "youtube.com",
];

/// The registrable domain ("eTLD+1") of a website, ASCII (punycode) and lower-case.
///
/// Accepts bare hosts ("acme.com"), scheme-relative ("//acme.com"), ports,
/// user-info, paths, trailing dots and IDNs. Uses both sections of the public
/// suffix list, so platform hosts such as "acme.github.io" are their own
/// registrable domain. Hosts whose top-level domain is not on the list
/// ("acme.local", typos) are rejected: a guessed suffix could silently
/// re-key the deal once the list learns about it.
pub fn registrable_domain(website: &str) -> Result<String, KeyError> {
    let invalid = |reason: String| KeyError::InvalidWebsite {
        website: website.to_owned(),
        reason,
    };
    let no_domain = |reason: String| KeyError::NoRegistrableDomain {
        website: website.to_owned(),
        reason,
    };

    let trimmed = website.trim();
    if trimmed.is_empty() {
        return Err(invalid("is empty".into()));
    }
    if trimmed.len() > MAX_WEBSITE_BYTES {
        return Err(invalid(format!("is longer than {MAX_WEBSITE_BYTES} bytes")));
    }
    // The url parser silently drops tabs/newlines and percent-encodes spaces in
    // paths; either usually means two values were pasted into one field.
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains whitespace".into()));
    }

    let url = Url::parse(&with_default_scheme(trimmed))
        .map_err(|e| invalid(format!("is not a valid url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must be http or https".into()));
    }
    let host = match url.host() {
        Some(Host::Domain(host)) => host,
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => {
            return Err(no_domain("host is an ip address".into()));
        }
        None => return Err(invalid("has no host".into())),
    };

    // A single trailing dot is the fully qualified spelling of the same host.
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.len() > MAX_HOST_BYTES {
        return Err(invalid(format!(
            "host is longer than {MAX_HOST_BYTES} bytes"
        )));
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        if !is_valid_host_label(label) {
            return Err(invalid(format!(
                "host {host:?} has an invalid label {label:?}"
            )));
        }
    }
    if labels.len() == 1 {
        return Err(no_domain(format!("{host:?} is a single-label host")));
    }

    // url hands us the punycode spelling; the psl crate's compiled list carries
    // the punycode form of IDN rules ("xn--p1ai" for "рф") alongside Unicode.
    if !psl::suffix(host.as_bytes()).is_some_and(|s| s.is_known()) {
        let tld = labels.last().copied().unwrap_or_default();
        return Err(no_domain(format!(
            "top-level domain {tld:?} is not on the public suffix list"
        )));
    }
    let registrable = psl::domain_str(&host)
        .ok_or_else(|| no_domain(format!("{host:?} is a public suffix")))?
        .to_owned();

    if PROFILE_PLATFORMS.contains(&registrable.as_str()) {
        let is_site_root = url.path().trim_matches('/').is_empty();
        let is_main_host = host == registrable || host == format!("www.{registrable}");
        if !(is_site_root && is_main_host) {
            return Err(KeyError::ProfileWebsite {
                website: website.to_owned(),
                platform: registrable,
            });
        }
    }
    Ok(registrable)
}

/// Bare "acme.com" and "acme.com:8443" would otherwise not parse or would parse
/// "acme.com" as a scheme; an explicit scheme ("mailto:", "ftp://") is kept so
/// it can be rejected.
fn with_default_scheme(input: &str) -> Cow<'_, str> {
    if input.starts_with("//") {
        return Cow::Owned(format!("https:{input}"));
    }
    if let Some((before, after)) = input.split_once(':') {
        let scheme_like = before.starts_with(|c: char| c.is_ascii_alphabetic())
            && before
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if scheme_like {
            let port = after.split(['/', '?', '#']).next().unwrap_or_default();
            let looks_like_port = port.chars().all(|c| c.is_ascii_digit());
            if after.starts_with("//") || !looks_like_port {
                return Cow::Borrowed(input);
            }
        }
    }
    Cow::Owned(format!("https://{input}"))
}

/// LDH rule. The url crate's IDNA step is lenient (it lets "_" through), and a
/// company website host never legitimately has one.
fn is_valid_host_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_BYTES
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

// ---------------------------------------------------------------------------
// GitHub owner
// ---------------------------------------------------------------------------

/// First path segments on github.com that are GitHub's own pages, never users
/// (GitHub refuses these as logins).
const GITHUB_RESERVED: &[&str] = &[
    "about",
    "apps",
    "collections",
    "customer-stories",
    "enterprise",
    "explore",
    "features",
    "join",
    "login",
    "marketplace",
    "new",
    "notifications",
    "orgs",
    "pricing",
    "pulls",
    "issues",
    "search",
    "security",
    "settings",
    "sponsors",
    "topics",
    "trending",
];

/// A GitHub login, lower-cased, from a bare login ("rust-lang", "@rust-lang"),
/// "owner/repo", or a github.com URL ("https://github.com/rust-lang/rust",
/// "github.com/orgs/rust-lang", "git@github.com:rust-lang/rust.git").
pub fn normalize_github_owner(owner: &str) -> Result<String, KeyError> {
    let invalid = |reason: &str| KeyError::InvalidGithubOwner {
        owner: owner.to_owned(),
        reason: reason.to_owned(),
    };

    let trimmed = owner.trim();
    if trimmed.is_empty() {
        return Err(invalid("is empty"));
    }
    let login = github_login_candidate(trimmed).map_err(invalid)?;

    if !login
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(invalid(
            "may only contain ascii letters, digits and hyphens",
        ));
    }
    if login.is_empty() || login.len() > MAX_GITHUB_LOGIN {
        return Err(invalid("must be 1-39 characters"));
    }
    if login.starts_with('-') || login.ends_with('-') {
        return Err(invalid("must not start or end with a hyphen"));
    }
    if login.contains("--") {
        return Err(invalid("must not contain consecutive hyphens"));
    }
    let login = login.to_ascii_lowercase();
    if GITHUB_RESERVED.contains(&login.as_str()) {
        return Err(invalid("is a github page, not an owner"));
    }
    Ok(login)
}

/// Pulls the login out of the accepted spellings; validation happens after.
fn github_login_candidate(input: &str) -> Result<&str, &'static str> {
    let input = input.strip_prefix('@').unwrap_or(input);

    let path = if let Some(rest) = strip_prefix_ignore_case(input, "git@github.com:") {
        Some(rest)
    } else {
        let without_scheme = ["https://", "http://", "//"]
            .iter()
            .find_map(|scheme| strip_prefix_ignore_case(input, scheme));
        let rest = without_scheme.unwrap_or(input);
        let after_host = ["www.github.com", "github.com"]
            .iter()
            .find_map(|host| strip_prefix_ignore_case(rest, host));
        match after_host {
            Some("") => Some(""),
            Some(path) if path.starts_with(['/', '?', '#']) => Some(path),
            // "github.community", "github.com.evil.io", "gitlab.com/x", ...
            _ if without_scheme.is_some() || input.contains("://") => {
                return Err("is not a github.com url");
            }
            _ => None,
        }
    };

    match path {
        Some(path) => {
            let path = path.split(['?', '#']).next().unwrap_or_default();
            let mut segments = path.split('/').filter(|s| !s.is_empty());
            let first = segments.next().ok_or("has no owner in the url")?;
            // Org and sponsor pages carry the owner in the second segment.
            if first.eq_ignore_ascii_case("orgs") || first.eq_ignore_ascii_case("sponsors") {
                segments.next().ok_or("has no owner in the url")
            } else {
                Ok(first)
            }
        }
        None => match input.split_once('/') {
            // "owner/repo" shorthand, but "gitlab.com/acme" is another host.
            Some((first, _)) if first.contains('.') => Err("is not a github.com url"),
            Some((first, _)) => Ok(first),
            None => Ok(input),
        },
    }
}

fn strip_prefix_ignore_case<'a>(input: &'a str, prefix: &str) -> Option<&'a str> {
    let head = input.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &input[prefix.len()..])
}

// ---------------------------------------------------------------------------
// Name
// ---------------------------------------------------------------------------

/// Legal-form suffixes as token sequences, matched after punctuation handling
/// (so "S.A." is "sa", "A/S" is "a s", "Co., Ltd." is "co ltd"). Stripped
/// repeatedly from the end only, so "Acme GmbH & Co. KG" and "Acme Pty Ltd"
/// fold to "acme" while "Inc Labs" keeps its leading "inc".
const LEGAL_SUFFIXES: &[&[&str]] = &[
    &["sa", "de", "cv"],
    &["s", "de", "rl"],
    &["sp", "z", "oo"],
    &["sdn", "bhd"],
    &["sà", "rl"],
    &["private", "limited"],
    &["a", "s"],
    &["s", "a"],
    &["ab"],
    &["ag"],
    &["aps"],
    &["as"],
    &["asa"],
    &["bhd"],
    &["bv"],
    &["co"],
    &["company"],
    &["corp"],
    &["corporation"],
    &["gmbh"],
    &["inc"],
    &["incorporated"],
    &["kg"],
    &["kgaa"],
    &["kk"],
    &["limited"],
    &["llc"],
    &["llp"],
    &["lp"],
    &["ltd"],
    &["ltda"],
    &["nv"],
    &["oy"],
    &["oyj"],
    &["oü"],
    &["plc"],
    &["pllc"],
    &["pte"],
    &["pty"],
    &["pvt"],
    &["sa"],
    &["sarl"],
    &["sas"],
    &["se"],
    &["sl"],
    &["spa"],
    &["sro"],
    &["srl"],
    &["sàrl"],
    &["ug"],
    &["株"],
    &["주"],
];

/// Legal-form prefixes as whole leading tokens ("㈱" folds to "(株)" -> "株").
const LEGAL_PREFIX_TOKENS: &[&str] = &["株", "주", "ооо", "оао", "зао", "пао"];

/// CJK legal forms attach without a space ("トヨタ自動車株式会社"), so they are
/// matched as string affixes of the first/last token. Longest first.
const CJK_LEGAL_SUFFIXES: &[&str] = &[
    "股份有限公司",
    "有限责任公司",
    "有限責任公司",
    "有限公司",
    "株式会社",
    "有限会社",
    "合同会社",
    "주식회사",
    "유한회사",
];
const CJK_LEGAL_PREFIXES: &[&str] = &["株式会社", "有限会社", "合同会社", "주식회사", "유한회사"];

/// Normalized company name: NFKC, lower-case, punctuation removed, whitespace
/// collapsed, legal forms dropped ("Acme, Inc." == "ACME inc" == "acme").
/// Letters of every script and their accents are kept.
pub fn normalize_name(name: &str) -> Result<String, KeyError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(KeyError::EmptyName);
    }
    let len = trimmed.chars().count();
    if len > MAX_NAME_CHARS {
        return Err(KeyError::NameTooLong { len });
    }

    // Lower-casing can produce text that is not NFKC, hence the second pass;
    // it keeps the function idempotent.
    let folded: String = trimmed
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect();

    let mut cleaned = String::with_capacity(folded.len());
    let mut prev_kept = false;
    for c in folded.chars() {
        if is_joining_punctuation(c) {
            // Deleted, not spaced: "S.A." -> "sa", "McDonald's" -> "mcdonalds".
            continue;
        }
        if c.is_alphanumeric() || (prev_kept && is_combining_mark(c)) {
            cleaned.push(c);
            prev_kept = true;
        } else {
            // Other punctuation, symbols and whitespace separate words:
            // "Coca-Cola" == "Coca Cola". A stray combining mark (NFKC turns
            // "´" into space + U+0301) goes too.
            cleaned.push(' ');
            prev_kept = false;
        }
    }

    let mut tokens: Vec<&str> = cleaned.split_whitespace().collect();
    strip_legal_forms(&mut tokens);
    if tokens.is_empty() {
        return Err(KeyError::NameNormalizesToEmpty(name.to_owned()));
    }
    Ok(tokens.join(" "))
}

fn is_joining_punctuation(c: char) -> bool {
    matches!(
        c,
        '.' | '\'' | '`' | '\u{2018}' | '\u{2019}' | '\u{02BC}' // quotes, modifier apostrophe
            | '\u{00AD}' // soft hyphen
            | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' // zero-width chars
    )
}

fn strip_legal_forms(tokens: &mut Vec<&str>) {
    // Repeat until stable: "Acme GmbH & Co. KG" needs three passes.
    loop {
        let mut changed = false;
        if let Some(suffix) = LEGAL_SUFFIXES.iter().find(|s| tokens.ends_with(s)) {
            tokens.truncate(tokens.len() - suffix.len());
            changed = true;
        }
        if let Some(last) = tokens.last_mut() {
            let token: &str = last;
            if let Some(stem) = CJK_LEGAL_SUFFIXES
                .iter()
                .find_map(|s| token.strip_suffix(s))
            {
                *last = stem;
                changed = true;
            }
        }
        if let Some(first) = tokens.first_mut() {
            let token: &str = first;
            if let Some(rest) = CJK_LEGAL_PREFIXES
                .iter()
                .find_map(|p| token.strip_prefix(p))
            {
                *first = rest;
                changed = true;
            }
        }
        if tokens
            .first()
            .is_some_and(|t| LEGAL_PREFIX_TOKENS.contains(t))
        {
            tokens.remove(0);
            changed = true;
        }
        tokens.retain(|t| !t.is_empty());
        if !changed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(website: &str) -> String {
        match registrable_domain(website) {
            Ok(d) => d,
            Err(e) => panic!("{website:?} should have a registrable domain: {e}"),
        }
    }

    fn no_domain_reason(website: &str) -> String {
        match registrable_domain(website) {
            Err(KeyError::NoRegistrableDomain { website: w, reason }) => {
                assert_eq!(w, website);
                reason
            }
            other => panic!("{website:?}: expected NoRegistrableDomain, got {other:?}"),
        }
    }

    fn invalid_website_reason(website: &str) -> String {
        match registrable_domain(website) {
            Err(KeyError::InvalidWebsite { website: w, reason }) => {
                assert_eq!(w, website);
                reason
            }
            other => panic!("{website:?}: expected InvalidWebsite, got {other:?}"),
        }
    }

    fn github(owner: &str) -> String {
        match normalize_github_owner(owner) {
            Ok(o) => o,
            Err(e) => panic!("{owner:?} should be a github owner: {e}"),
        }
    }

    fn github_reason(owner: &str) -> String {
        match normalize_github_owner(owner) {
            Err(KeyError::InvalidGithubOwner { owner: o, reason }) => {
                assert_eq!(o, owner);
                reason
            }
            other => panic!("{owner:?}: expected InvalidGithubOwner, got {other:?}"),
        }
    }

    fn name(name: &str) -> String {
        match normalize_name(name) {
            Ok(n) => n,
            Err(e) => panic!("{name:?} should normalize: {e}"),
        }
    }

    fn key(website: Option<&str>, github: Option<&str>, name: Option<&str>) -> CompanyKey {
        match CompanyKey::derive(website, github, name) {
            Ok(k) => k,
            Err(e) => panic!("derive({website:?}, {github:?}, {name:?}) failed: {e}"),
        }
    }

    // --- deal id -------------------------------------------------------------

    #[test]
    fn namespace_is_the_documented_v5_of_the_project_url() {
        let expected = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            b"https://github.com/dealmesh/dealmesh/company-key",
        );
        assert_eq!(DEAL_ID_NAMESPACE, expected);
        assert_eq!(
            DEAL_ID_NAMESPACE.to_string(),
            "b9f4e745-ac8a-56a6-b13e-9f805abafdc8"
        );
    }

    #[test]
    fn deal_id_is_pinned_forever() {
        let k = key(Some("acme.com"), None, None);
        assert_eq!(k.as_canonical_string(), "domain:acme.com");
        // Cross-checked with Python's uuid.uuid5. If this changes, every
        // stored deal id changes with it.
        assert_eq!(
            k.deal_id().to_string(),
            "1da67fa8-e3b8-5937-a09e-71d08492c5f3"
        );
        assert_eq!(k.deal_id().get_version_num(), 5);
        let gh = key(None, Some("rust-lang"), None);
        assert_eq!(
            gh.deal_id().to_string(),
            "685ab2cb-b9a1-5a99-abe3-5d0001a7e9a4"
        );
        let n = key(None, None, Some("Acme Robotics, LLC"));
        assert_eq!(
            n.deal_id().to_string(),
            "efdd9026-a605-5f38-b18c-a69004dabdbc"
        );
    }

    #[test]
    fn canonical_strings_and_accessors() {
        let d = key(Some("https://www.acme.co.uk/"), None, None);
        assert_eq!(d.kind(), KeyKind::Domain);
        assert_eq!(d.value(), "acme.co.uk");
        assert_eq!(d.as_canonical_string(), "domain:acme.co.uk");

        let g = key(None, Some("https://github.com/Rust-Lang/rust"), None);
        assert_eq!(g.kind(), KeyKind::GithubOwner);
        assert_eq!(g.value(), "rust-lang");
        assert_eq!(g.as_canonical_string(), "github:rust-lang");

        let n = key(None, None, Some("  ACME   Robotics, Inc. "));
        assert_eq!(n.kind(), KeyKind::Name);
        assert_eq!(n.value(), "acme robotics");
        assert_eq!(n.as_canonical_string(), "name:acme robotics");
    }

    #[test]
    fn kinds_do_not_collide_on_the_same_value() {
        let by_name = key(None, None, Some("acme"));
        let by_github = key(None, Some("acme"), None);
        assert_eq!(by_name.value(), by_github.value());
        assert_ne!(by_name.deal_id(), by_github.deal_id());
    }

    #[test]
    fn same_company_from_three_sources_is_one_deal() {
        let a = key(Some("https://www.acme.io/careers"), Some("acme-hq"), None);
        let b = key(Some("acme.io"), None, Some("Acme, Inc."));
        let c = key(Some("http://app.acme.io"), None, None);
        let d = key(Some("HTTPS://ACME.IO:443/?utm_source=x#top"), None, None);
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(c, d);
        assert_eq!(a.value(), "acme.io");
        assert_eq!(a.deal_id(), c.deal_id());
        assert_eq!(
            a.deal_id().to_string(),
            "69c19a28-852a-58fc-9439-b5edf41021a2"
        );

        let by_github = [
            key(None, Some("Acme-HQ"), Some("Acme")),
            key(None, Some("https://github.com/acme-hq/widget"), None),
            key(None, Some("@acme-hq"), Some("Something Else Ltd")),
        ];
        assert!(
            by_github
                .iter()
                .all(|k| k.as_canonical_string() == "github:acme-hq")
        );

        let by_name = [
            key(None, None, Some("Acme, Inc.")),
            key(None, None, Some("ACME inc")),
            key(None, None, Some("Ａｃｍｅ")),
        ];
        assert!(
            by_name
                .iter()
                .all(|k| k.as_canonical_string() == "name:acme")
        );
    }

    #[test]
    fn different_companies_get_different_ids() {
        let a = key(Some("acme.com"), None, None);
        let b = key(Some("acme.co.uk"), None, None);
        let c = key(Some("acme.github.io"), None, None);
        let d = key(Some("other.github.io"), None, None);
        assert_ne!(a.deal_id(), b.deal_id());
        assert_ne!(c.deal_id(), d.deal_id());
        assert_ne!(a.deal_id(), c.deal_id());
    }

    // --- precedence and absence -----------------------------------------------

    #[test]
    fn website_beats_github_beats_name() {
        let all = key(Some("acme.com"), Some("acme-gh"), Some("Acme Name"));
        assert_eq!(all.as_canonical_string(), "domain:acme.com");

        let no_site = key(None, Some("acme-gh"), Some("Acme Name"));
        assert_eq!(no_site.as_canonical_string(), "github:acme-gh");

        let only_name = key(None, None, Some("Acme Name"));
        assert_eq!(only_name.as_canonical_string(), "name:acme name");
    }

    #[test]
    fn blank_inputs_count_as_absent() {
        let k = key(Some("   "), Some(""), Some("Acme Ltd"));
        assert_eq!(k.as_canonical_string(), "name:acme");
        let k = key(Some("\t\n"), Some(" acme-gh "), None);
        assert_eq!(k.as_canonical_string(), "github:acme-gh");
        assert_eq!(
            CompanyKey::derive(None, None, None),
            Err(KeyError::NoIdentity)
        );
        assert_eq!(
            CompanyKey::derive(Some(""), Some("  "), Some("\t")),
            Err(KeyError::NoIdentity)
        );
        assert_eq!(
            KeyError::NoIdentity.to_string(),
            "no website, github owner or name to identify the company"
        );
    }

    #[test]
    fn invalid_strongest_input_is_an_error_not_a_fallback() {
        assert_eq!(
            CompanyKey::derive(Some("ftp://acme.com"), Some("acme"), Some("Acme")),
            Err(KeyError::InvalidWebsite {
                website: "ftp://acme.com".into(),
                reason: "must be http or https".into(),
            })
        );
        assert!(matches!(
            CompanyKey::derive(Some("localhost"), Some("acme"), None),
            Err(KeyError::NoRegistrableDomain { .. })
        ));
        assert!(matches!(
            CompanyKey::derive(None, Some("not a login"), Some("Acme")),
            Err(KeyError::InvalidGithubOwner { .. })
        ));
        assert_eq!(
            CompanyKey::derive(None, None, Some("Inc.")),
            Err(KeyError::NameNormalizesToEmpty("Inc.".into()))
        );
        // Weaker inputs are not inspected once a stronger one is valid.
        let k = key(Some("acme.com"), Some("--bad--"), Some("!!!"));
        assert_eq!(k.value(), "acme.com");
    }

    // --- websites --------------------------------------------------------------

    #[test]
    fn website_basic_forms() {
        assert_eq!(domain("acme.com"), "acme.com");
        assert_eq!(domain("www.acme.com"), "acme.com");
        assert_eq!(domain("https://WWW.Acme.com/about?x=1#y"), "acme.com");
        assert_eq!(domain("http://blog.acme.co.uk/path"), "acme.co.uk");
        assert_eq!(domain("a.b.c.deep.acme.com"), "acme.com");
        assert_eq!(domain("ACME.COM"), "acme.com");
        assert_eq!(domain("  https://acme.com  "), "acme.com");
    }

    #[test]
    fn website_ports_paths_queries_fragments() {
        assert_eq!(domain("acme.com:8443"), "acme.com");
        assert_eq!(domain("acme.com:8443/login"), "acme.com");
        assert_eq!(domain("https://acme.com:8443/x/y?z=1#frag"), "acme.com");
        assert_eq!(domain("acme.com/pricing?plan=pro#faq"), "acme.com");
        assert_eq!(domain("acme.com?ref=hn"), "acme.com");
        assert_eq!(domain("acme.com#team"), "acme.com");
        assert_eq!(domain("acme.com/redirect?to=http://other.com"), "acme.com");
    }

    #[test]
    fn website_scheme_less_and_odd_but_valid_forms() {
        assert_eq!(domain("//acme.com"), "acme.com");
        assert_eq!(domain("//www.acme.com/about"), "acme.com");
        assert_eq!(domain("http:acme.com"), "acme.com");
        assert_eq!(domain("https://user:pw@acme.com"), "acme.com");
        assert_eq!(domain("https://user@www.acme.com/x"), "acme.com");
        assert_eq!(domain("acme.com."), "acme.com");
        assert_eq!(domain("https://www.acme.com./about"), "acme.com");
    }

    #[test]
    fn website_multi_level_suffixes() {
        assert_eq!(domain("acme.co.uk"), "acme.co.uk");
        assert_eq!(domain("shop.acme.co.uk"), "acme.co.uk");
        assert_eq!(domain("https://www.acme.com.au/"), "acme.com.au");
        assert_eq!(domain("portal.acme.com.br"), "acme.com.br");
        assert_eq!(domain("acme.co.jp"), "acme.co.jp");
        // Wildcard rule "*.kawasaki.jp" with exception "!city.kawasaki.jp".
        assert_eq!(domain("shop.acme.kawasaki.jp"), "shop.acme.kawasaki.jp");
        assert_eq!(domain("www.city.kawasaki.jp"), "city.kawasaki.jp");
    }

    #[test]
    fn website_private_suffixes_are_their_own_company() {
        assert_eq!(domain("acme.github.io"), "acme.github.io");
        assert_eq!(domain("https://www.acme.github.io/docs"), "acme.github.io");
        assert_eq!(domain("acme-app.herokuapp.com"), "acme-app.herokuapp.com");
        assert_eq!(domain("https://acme.vercel.app"), "acme.vercel.app");
        assert_eq!(domain("preview.acme.pages.dev"), "acme.pages.dev");
        assert_eq!(
            no_domain_reason("github.io"),
            "\"github.io\" is a public suffix"
        );
        assert_eq!(
            no_domain_reason("https://vercel.app/"),
            "\"vercel.app\" is a public suffix"
        );
    }

    #[test]
    fn website_internationalized_domains() {
        assert_eq!(domain("https://bücher.de"), "xn--bcher-kva.de");
        assert_eq!(domain("https://www.BÜCHER.de/katalog"), "xn--bcher-kva.de");
        assert_eq!(domain("xn--bcher-kva.de"), "xn--bcher-kva.de");
        // Fullwidth letters and the ideographic full stop fold via IDNA.
        assert_eq!(domain("ａｃｍｅ．ｃｏｍ"), "acme.com");
        // IDN top-level domain "рф" is matched in its punycode spelling.
        assert_eq!(domain("https://www.пример.рф/"), "xn--e1afmkfd.xn--p1ai");
        assert_eq!(domain("xn--e1afmkfd.xn--p1ai"), "xn--e1afmkfd.xn--p1ai");
        // Multi-label IDN suffix "公司.香港".
        assert_eq!(
            domain("www.例子.公司.香港"),
            "xn--fsqu00a.xn--55qx5d.xn--j6w193g"
        );
        assert_eq!(
            no_domain_reason("公司.香港"),
            "\"xn--55qx5d.xn--j6w193g\" is a public suffix"
        );
    }

    #[test]
    fn website_rejects_ip_addresses() {
        for ip in [
            "127.0.0.1",
            "http://127.0.0.1/",
            "10.0.0.1:8080",
            "https://192.168.1.10/admin",
            "http://0x7f.1",
            "http://[::1]/",
            "[2001:db8::1]",
            "https://[2001:db8::1]:8443/x",
        ] {
            assert_eq!(no_domain_reason(ip), "host is an ip address", "{ip}");
        }
    }

    #[test]
    fn website_rejects_single_labels_and_bare_suffixes() {
        assert_eq!(
            no_domain_reason("localhost"),
            "\"localhost\" is a single-label host"
        );
        assert_eq!(
            no_domain_reason("http://localhost:3000/x"),
            "\"localhost\" is a single-label host"
        );
        assert_eq!(
            no_domain_reason("intranet"),
            "\"intranet\" is a single-label host"
        );
        assert_eq!(no_domain_reason("com"), "\"com\" is a single-label host");
        assert_eq!(no_domain_reason("co.uk"), "\"co.uk\" is a public suffix");
        assert_eq!(no_domain_reason("com.au"), "\"com.au\" is a public suffix");
        assert_eq!(
            no_domain_reason("acme.local"),
            "top-level domain \"local\" is not on the public suffix list"
        );
        assert_eq!(
            no_domain_reason("acme.notarealtld"),
            "top-level domain \"notarealtld\" is not on the public suffix list"
        );
    }

    #[test]
    fn website_rejects_other_schemes() {
        for w in [
            "ftp://acme.com",
            "mailto:founder@acme.com",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "ws://acme.com",
        ] {
            assert_eq!(invalid_website_reason(w), "must be http or https", "{w}");
        }
        let err = registrable_domain("ftp://x").err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("website \"ftp://x\" must be http or https")
        );
    }

    #[test]
    fn website_rejects_spaces_empty_and_garbage() {
        assert_eq!(invalid_website_reason("acme .com"), "contains whitespace");
        assert_eq!(
            invalid_website_reason("https://acme.com/about us"),
            "contains whitespace"
        );
        assert_eq!(
            invalid_website_reason("acme.com\tacme.io"),
            "contains whitespace"
        );
        assert_eq!(
            invalid_website_reason("acme.com acme.io"),
            "contains whitespace"
        );
        assert_eq!(invalid_website_reason(""), "is empty");
        assert_eq!(invalid_website_reason("   "), "is empty");
        assert!(invalid_website_reason("http://").starts_with("is not a valid url"));
        assert!(invalid_website_reason("https://acme.com:99999").starts_with("is not a valid url"));
        assert_eq!(
            invalid_website_reason("https://acme..com"),
            "host \"acme..com\" has an invalid label \"\""
        );
        assert_eq!(
            invalid_website_reason("acme_corp.com"),
            "host \"acme_corp.com\" has an invalid label \"acme_corp\""
        );
        assert_eq!(
            invalid_website_reason("https://-acme.com"),
            "host \"-acme.com\" has an invalid label \"-acme\""
        );
        let long = format!("https://acme.com/{}", "a".repeat(3000));
        assert_eq!(invalid_website_reason(&long), "is longer than 2048 bytes");
    }

    #[test]
    fn website_profile_pages_are_not_company_sites() {
        for (w, platform) in [
            ("https://github.com/acme", "github.com"),
            ("github.com/acme/widget", "github.com"),
            ("https://www.linkedin.com/company/acme/", "linkedin.com"),
            ("https://uk.linkedin.com/company/acme", "linkedin.com"),
            ("https://twitter.com/acme", "twitter.com"),
            ("x.com/acme", "x.com"),
            ("https://acme.medium.com", "medium.com"),
        ] {
            assert_eq!(
                registrable_domain(w),
                Err(KeyError::ProfileWebsite {
                    website: w.into(),
                    platform: platform.into(),
                }),
                "{w}"
            );
        }
        // The platform's own homepage is still that company.
        assert_eq!(domain("https://github.com"), "github.com");
        assert_eq!(domain("https://www.linkedin.com/?trk=x"), "linkedin.com");
        assert_eq!(
            registrable_domain("https://github.com/acme")
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some(
                "website \"https://github.com/acme\" is a profile page on github.com, not the company's own site"
            )
        );
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(
            registrable_domain("co.uk")
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("website \"co.uk\" has no registrable domain: \"co.uk\" is a public suffix")
        );
        assert_eq!(
            registrable_domain("http://10.0.0.1")
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("website \"http://10.0.0.1\" has no registrable domain: host is an ip address")
        );
    }

    // --- github ------------------------------------------------------------------

    #[test]
    fn github_accepted_forms() {
        for input in [
            "rust-lang",
            "Rust-Lang",
            "RUST-LANG",
            "@rust-lang",
            "  rust-lang  ",
            "https://github.com/rust-lang",
            "https://github.com/rust-lang/rust",
            "https://github.com/rust-lang/rust/issues/1?x=1#y",
            "http://www.github.com/Rust-Lang?tab=repositories",
            "HTTPS://GITHUB.COM/rust-lang",
            "github.com/rust-lang/",
            "www.github.com/rust-lang",
            "//github.com/rust-lang",
            "git@github.com:rust-lang/rust.git",
            "rust-lang/rust",
            "https://github.com/orgs/rust-lang/people",
            "https://github.com/sponsors/rust-lang",
        ] {
            assert_eq!(github(input), "rust-lang", "{input}");
        }
        assert_eq!(github("a"), "a");
        assert_eq!(github("A1"), "a1");
        assert_eq!(github("x-y-z"), "x-y-z");
        let max = "a".repeat(39);
        assert_eq!(github(&max), max);
    }

    #[test]
    fn github_rejects_invalid_logins() {
        assert_eq!(github_reason(""), "is empty");
        assert_eq!(github_reason("   "), "is empty");
        assert_eq!(github_reason("@"), "must be 1-39 characters");
        assert_eq!(github_reason(&"a".repeat(40)), "must be 1-39 characters");
        assert_eq!(
            github_reason("-acme"),
            "must not start or end with a hyphen"
        );
        assert_eq!(
            github_reason("acme-"),
            "must not start or end with a hyphen"
        );
        assert_eq!(
            github_reason("ac--me"),
            "must not contain consecutive hyphens"
        );
        for bad in ["acme_corp", "acme.com", "ácme", "not a login", "acme!"] {
            assert_eq!(
                github_reason(bad),
                "may only contain ascii letters, digits and hyphens",
                "{bad}"
            );
        }
    }

    #[test]
    fn github_rejects_non_owner_urls() {
        assert_eq!(
            github_reason("https://github.com/"),
            "has no owner in the url"
        );
        assert_eq!(github_reason("github.com"), "has no owner in the url");
        assert_eq!(
            github_reason("https://github.com/orgs/"),
            "has no owner in the url"
        );
        assert_eq!(
            github_reason("https://gitlab.com/acme"),
            "is not a github.com url"
        );
        assert_eq!(github_reason("gitlab.com/acme"), "is not a github.com url");
        assert_eq!(
            github_reason("https://github.com.evil.io/acme"),
            "is not a github.com url"
        );
        assert_eq!(
            github_reason("https://gist.github.com/acme"),
            "is not a github.com url"
        );
        assert_eq!(
            github_reason("https://github.com/features/actions"),
            "is a github page, not an owner"
        );
        assert_eq!(
            github_reason("https://github.com/marketplace"),
            "is a github page, not an owner"
        );
        assert_eq!(
            normalize_github_owner("-x")
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("github owner \"-x\" must not start or end with a hyphen")
        );
    }

    // --- names -------------------------------------------------------------------

    #[test]
    fn name_legal_suffixes_fold_together() {
        for input in [
            "Acme",
            "acme",
            "ACME",
            "Acme, Inc.",
            "ACME inc",
            "Acme Inc",
            "Acme Incorporated",
            "Acme LLC",
            "Acme L.L.C.",
            "Acme Ltd",
            "Acme Ltd.",
            "Acme Limited",
            "Acme GmbH",
            "Acme AG",
            "Acme S.A.",
            "Acme SA",
            "Acme SAS",
            "Acme B.V.",
            "Acme BV",
            "Acme Oy",
            "Acme AB",
            "Acme plc",
            "Acme Corp.",
            "Acme Corporation",
            "Acme Co.",
            "Acme & Co.",
            "Acme Pty Ltd",
            "Acme Pty. Ltd.",
            "Acme Co., Ltd.",
            "Acme S.r.l.",
            "Acme SRL",
            "Acme S.p.A.",
            "Acme GmbH & Co. KG",
            "Acme A/S",
            "Acme Sp. z o.o.",
            "Acme S.A. de C.V.",
            "Acme Sdn. Bhd.",
            "Acme SE",
            "Acme Private Limited",
            "Acme Pte. Ltd.",
        ] {
            assert_eq!(name(input), "acme", "{input}");
        }
        assert_eq!(name("Acme Robotics LLC"), "acme robotics");
        assert_eq!(name("The Coca-Cola Company"), "the coca cola");
    }

    #[test]
    fn name_legal_suffix_only_at_the_end() {
        assert_eq!(name("Inc Labs"), "inc labs");
        assert_eq!(name("Ltd Brands, Inc."), "ltd brands");
        assert_eq!(name("GmbH Solutions"), "gmbh solutions");
        assert_eq!(name("Incorporeal"), "incorporeal");
        assert_eq!(name("Acme Incubator"), "acme incubator");
    }

    #[test]
    fn name_punctuation_and_whitespace() {
        assert_eq!(name("  Acme \t\n  Robotics  "), "acme robotics");
        assert_eq!(name("Coca-Cola"), "coca cola");
        assert_eq!(name("Coca-Cola"), name("Coca Cola"));
        assert_eq!(name("McDonald's"), "mcdonalds");
        assert_eq!(name("McDonald\u{2019}s"), "mcdonalds");
        assert_eq!(name("Yahoo!"), "yahoo");
        assert_eq!(name("Procter & Gamble"), "procter gamble");
        assert_eq!(name("A.C.M.E."), "acme");
        assert_eq!(name("7-Eleven, Inc."), "7 eleven");
        assert_eq!(name("Acme 🚀 Labs"), "acme labs");
        assert_eq!(name("Acme\u{200B}Labs"), "acmelabs");
    }

    #[test]
    fn name_unicode_folding() {
        assert_eq!(name("Ｆｕｌｌｗｉｄｔｈ"), "fullwidth");
        assert_eq!(name("ＡＣＭＥ\u{3000}ＩＮＣ"), "acme");
        // Accents survive, and decomposed input folds to the composed form.
        let composed = "soci\u{e9}t\u{e9} g\u{e9}n\u{e9}rale";
        assert_eq!(name("Société Générale"), composed);
        assert_eq!(
            name("SOCIE\u{301}TE\u{301} GE\u{301}NE\u{301}RALE S.A."),
            composed
        );
        assert_eq!(name("Müller GmbH"), "m\u{fc}ller");
        assert_eq!(name("Ελληνικά Α.Ε."), "ελληνικά αε");
        assert_eq!(name("Яндекс"), "яндекс");
        assert_eq!(name("ООО «Яндекс»"), "яндекс");
        assert_eq!(name("ﬁnance ﬂow"), "finance flow");
        assert_eq!(name("Acme\u{B4}"), "acme");
    }

    #[test]
    fn name_cjk_legal_forms() {
        assert_eq!(name("株式会社トヨタ"), "トヨタ");
        assert_eq!(name("トヨタ株式会社"), "トヨタ");
        assert_eq!(name("トヨタ 株式会社"), "トヨタ");
        assert_eq!(name("株式会社 トヨタ"), "トヨタ");
        assert_eq!(name("㈱トヨタ"), "トヨタ");
        assert_eq!(name("トヨタ(株)"), "トヨタ");
        // Half-width katakana folds to full-width under NFKC.
        assert_eq!(name("ﾄﾖﾀ"), "トヨタ");
        assert_eq!(name("ソニーグループ株式会社"), "ソニーグループ");
        assert_eq!(name("阿里巴巴集团控股有限公司"), "阿里巴巴集团控股");
        assert_eq!(name("腾讯控股有限公司"), "腾讯控股");
        assert_eq!(name("삼성전자 주식회사"), "삼성전자");
        assert_eq!(name("(주)카카오"), "카카오");
        assert_eq!(name("会社"), "会社");
    }

    #[test]
    fn name_errors() {
        assert_eq!(normalize_name(""), Err(KeyError::EmptyName));
        assert_eq!(normalize_name(" \t "), Err(KeyError::EmptyName));
        for empty in ["Inc.", "!!!", "LLC", "Co., Ltd.", "株式会社", "—", "🚀"] {
            assert_eq!(
                normalize_name(empty),
                Err(KeyError::NameNormalizesToEmpty(empty.into())),
                "{empty}"
            );
        }
        let long = "a".repeat(301);
        assert_eq!(
            normalize_name(&long),
            Err(KeyError::NameTooLong { len: 301 })
        );
        // The cap counts characters, not bytes.
        let wide = "é".repeat(300);
        assert_eq!(name(&wide), wide);
        assert_eq!(
            normalize_name("Inc.")
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("name \"Inc.\" has nothing left after normalization")
        );
        assert_eq!(KeyError::EmptyName.to_string(), "name is empty");
        assert_eq!(
            KeyError::NameTooLong { len: 301 }.to_string(),
            "name is 301 characters, over the 300 limit"
        );
    }

    #[test]
    fn name_normalization_is_idempotent() {
        for input in [
            "Acme, Inc.",
            "Société Générale",
            "Ｆｕｌｌｗｉｄｔｈ Co",
            "株式会社トヨタ",
            "İstanbul Holding A.Ş.",
            "Straße GmbH",
            "ΣΊΣΥΦΟΣ",
        ] {
            let once = name(input);
            assert_eq!(name(&once), once, "{input}");
        }
    }
}
