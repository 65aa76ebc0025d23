//! Bearer JWT authentication for every dealmesh gRPC API, and the roles the
//! APIs check.
//!
//! Two ways to trust a token, chosen by configuration:
//! - HS256 with a shared secret ([`JWT_HS256_SECRET`]), for development and
//!   the local stack;
//! - RS256 with the public keys an OIDC provider publishes at a JWKS URL
//!   ([`JWT_JWKS_URL`]), fetched on first use, cached, and fetched again when
//!   a token names a key id the cache does not hold (key rotation).
//!
//! A token carries `sub`, `role` (one of [`Role`]), `exp`, and for LPs an
//! `lp_id` (which defaults to `sub`). `iss` and `aud` are checked when
//! configured.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dealmesh_proto::v1::{Actor, ActorKind};
use dealmesh_runtime::config::{ConfigError, Reader, Source};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// HS256 shared secret (at least 32 characters). For development and the
/// local stack; use a JWKS URL with an OIDC provider in production.
pub const JWT_HS256_SECRET: &str = "DEALMESH_JWT_HS256_SECRET";
/// URL of the OIDC provider's JSON Web Key Set; tokens signed RS256 with
/// one of its keys are accepted.
pub const JWT_JWKS_URL: &str = "DEALMESH_JWT_JWKS_URL";
/// When set, a token's `iss` must equal it.
pub const JWT_ISSUER: &str = "DEALMESH_JWT_ISSUER";
/// When set, a token's `aud` must contain it.
pub const JWT_AUDIENCE: &str = "DEALMESH_JWT_AUDIENCE";

/// Shortest accepted HS256 secret: RFC 7518 asks for a key at least as long
/// as the hash output (256 bits).
const MIN_SECRET_LEN: usize = 32;
/// How long fetched JWKS keys are trusted before they are fetched again.
const JWKS_TTL: Duration = Duration::from_secs(600);
/// An unknown key id triggers a fetch at most this often, so a flood of
/// forged tokens cannot make us hammer the provider.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 30;

/// What a caller may do is decided by its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Partner,
    Analyst,
    Lp,
    Service,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Partner,
        Role::Analyst,
        Role::Lp,
        Role::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Partner => "partner",
            Role::Analyst => "analyst",
            Role::Lp => "lp",
            Role::Service => "service",
        }
    }

    pub fn parse(value: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == value)
    }

    pub fn to_proto(self) -> dealmesh_proto::v1::Role {
        use dealmesh_proto::v1::Role as P;
        match self {
            Role::Admin => P::Admin,
            Role::Partner => P::Partner,
            Role::Analyst => P::Analyst,
            Role::Lp => P::Lp,
            Role::Service => P::Service,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
    /// The LP this caller acts for; set for (and only for) LPs.
    pub lp_id: Option<String>,
    pub name: Option<String>,
}

impl Principal {
    pub fn is_lp(&self) -> bool {
        self.role == Role::Lp
    }

    /// The actor recorded on events this caller causes.
    pub fn actor(&self) -> Actor {
        let kind = if self.role == Role::Service {
            ActorKind::Service
        } else {
            ActorKind::User
        };
        Actor {
            kind: kind as i32,
            id: self.subject.clone(),
            role: self.role.to_proto() as i32,
            display_name: self.name.clone().unwrap_or_else(|| self.subject.clone()),
        }
    }
}

/// The claims dealmesh reads from a token, and writes when minting one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lp_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Claims for `sub` acting as `role`, valid for `ttl` from now.
    pub fn new(sub: &str, role: Role, ttl: Duration) -> Self {
        let now = now_secs();
        Self {
            sub: sub.to_owned(),
            role: role.as_str().to_owned(),
            lp_id: None,
            name: None,
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            iat: now,
            iss: None,
            aud: None,
        }
    }

    /// Claims for the LP `lp_id`, valid for `ttl` from now.
    pub fn lp(lp_id: &str, ttl: Duration) -> Self {
        Self {
            lp_id: Some(lp_id.to_owned()),
            ..Self::new(lp_id, Role::Lp, ttl)
        }
    }
}

/// Signs `claims` with an HS256 `secret`: for tests, the local stack and
/// operators' scripts against a development installation.
pub fn mint_hs256(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_else(|error| unreachable!("HS256 signing of plain claims cannot fail: {error}"))
}

/// How tokens are verified.
#[derive(Clone)]
pub struct AuthConfig {
    pub hs256_secret: Option<SecretString>,
    pub jwks_url: Option<url::Url>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl AuthConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let r = Reader::new(source);
        let hs256_secret = r.secret(JWT_HS256_SECRET);
        if let Some(secret) = &hs256_secret
            && secret.expose_secret().len() < MIN_SECRET_LEN
        {
            return Err(ConfigError::new(
                JWT_HS256_SECRET,
                format!("must be at least {MIN_SECRET_LEN} characters"),
            ));
        }
        let jwks_url = match r.optional_string(JWT_JWKS_URL) {
            None => None,
            Some(raw) => {
                let url = url::Url::parse(&raw).map_err(|e| {
                    ConfigError::new(JWT_JWKS_URL, format!("invalid URL {raw:?}: {e}"))
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::new(JWT_JWKS_URL, "must be an http(s) URL"));
                }
                Some(url)
            }
        };
        if hs256_secret.is_none() && jwks_url.is_none() {
            return Err(ConfigError::new(
                JWT_HS256_SECRET,
                format!("set {JWT_HS256_SECRET} (development) or {JWT_JWKS_URL} (OIDC provider)"),
            ));
        }
        Ok(Self {
            hs256_secret,
            jwks_url,
            issuer: r.optional_string(JWT_ISSUER),
            audience: r.optional_string(JWT_AUDIENCE),
        })
    }

    /// A development configuration trusting HS256 tokens signed with `secret`.
    pub fn hs256(secret: &str) -> Self {
        Self {
            hs256_secret: Some(SecretString::from(secret.to_owned())),
            jwks_url: None,
            issuer: None,
            audience: None,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[REDACTED]"),
            )
            .field("jwks_url", &self.jwks_url.as_ref().map(url::Url::as_str))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Why a token was refused. The message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send 'authorization: Bearer <jwt>'")]
    Missing,
    #[error("malformed authorization header: expected 'Bearer <jwt>'")]
    MalformedHeader,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token expired")]
    Expired,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm {0} is not accepted here")]
    Algorithm(String),
    #[error("token key id {0:?} is unknown to the identity provider")]
    UnknownKey(String),
    #[error("token issuer or audience is not accepted")]
    WrongIssuerOrAudience,
    #[error("token role {0:?} is unknown (expected admin, partner, analyst, lp or service)")]
    UnknownRole(String),
    #[error("token claim {0} is empty")]
    EmptyClaim(&'static str),
    #[error("identity provider keys unavailable: {0}")]
    KeysUnavailable(String),
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            // Our side failed, not the caller's token: tell them to retry.
            AuthError::KeysUnavailable(_) => Status::unavailable(error.to_string()),
            _ => Status::unauthenticated(error.to_string()),
        }
    }
}

/// Verifies bearer tokens. Cheap to clone; clones share the JWKS cache.
#[derive(Clone)]
pub struct Authenticator {
    config: Arc<AuthConfig>,
    jwks: Arc<Mutex<JwksCache>>,
    http: reqwest::Client,
}

#[derive(Default)]
struct JwksCache {
    keys: Option<JwkSet>,
    fetched_at: Option<Instant>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            config: Arc::new(config.clone()),
            jwks: Arc::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Verifies `token` and returns who it speaks for.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => match &self.config.hs256_secret {
                Some(secret) => DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                None => return Err(AuthError::Algorithm("HS256".into())),
            },
            Algorithm::RS256 if self.config.jwks_url.is_some() => {
                self.jwks_key(header.kid.as_deref()).await?
            }
            other => return Err(AuthError::Algorithm(format!("{other:?}"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        // jsonwebtoken checks iss/aud only when the token has them: a
        // configured issuer or audience must also make the claim required.
        let mut required = vec!["exp", "sub"];
        match &self.config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(classify)?
            .claims;
        principal(claims)
    }

    /// Authenticates the `authorization: Bearer <jwt>` of a gRPC request.
    pub async fn from_metadata(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let value = metadata
            .get("authorization")
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::MalformedHeader)?;
        let token = bearer(value).ok_or(AuthError::MalformedHeader)?;
        Ok(self.authenticate(token).await?)
    }

    async fn jwks_key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let kid = kid.ok_or_else(|| AuthError::Malformed("RS256 token without 'kid'".into()))?;
        let mut cache = self.jwks.lock().await;
        let age = cache.fetched_at.map(|at| at.elapsed());
        let stale = age.is_none_or(|age| age > JWKS_TTL);
        let missing = cache
            .keys
            .as_ref()
            .is_none_or(|set| set.find(kid).is_none());
        let may_refresh = age.is_none_or(|age| age > JWKS_MIN_REFRESH);
        if stale || (missing && may_refresh) {
            match self.fetch_jwks().await {
                Ok(set) => {
                    cache.keys = Some(set);
                    cache.fetched_at = Some(Instant::now());
                }
                // Keep serving with the keys we have if the provider blips.
                Err(error) if cache.keys.is_some() => {
                    tracing::warn!(%error, "jwks refresh failed, keeping cached keys");
                }
                Err(error) => return Err(error),
            }
        }
        let jwk = cache
            .keys
            .as_ref()
            .and_then(|set| set.find(kid))
            .ok_or_else(|| AuthError::UnknownKey(kid.to_owned()))?;
        DecodingKey::from_jwk(jwk).map_err(|e| AuthError::KeysUnavailable(e.to_string()))
    }

    #[tracing::instrument(skip_all, err)]
    async fn fetch_jwks(&self) -> Result<JwkSet, AuthError> {
        let Some(url) = &self.config.jwks_url else {
            return Err(AuthError::KeysUnavailable("no JWKS URL configured".into()));
        };
        let unavailable = |e: reqwest::Error| AuthError::KeysUnavailable(e.to_string());
        let set = self
            .http
            .get(url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json::<JwkSet>()
            .await
            .map_err(unavailable)?;
        tracing::info!(keys = set.keys.len(), "jwks fetched");
        Ok(set)
    }
}

/// PERMISSION_DENIED unless the caller's role is one of `allowed`.
pub fn require(principal: &Principal, allowed: &[Role], action: &str) -> Result<(), Status> {
    if allowed.contains(&principal.role) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "role {} may not {action}",
            principal.role
        )))
    }
}

fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    if claims.sub.trim().is_empty() {
        return Err(AuthError::EmptyClaim("sub"));
    }
    let role = Role::parse(&claims.role).ok_or(AuthError::UnknownRole(claims.role))?;
    let lp_id = match role {
        Role::Lp => Some(
            claims
                .lp_id
                .filter(|id| !id.trim().is_empty())
                .unwrap_or_else(|| claims.sub.clone()),
        ),
        _ => None,
    };
    Ok(Principal {
        subject: claims.sub,
        role,
        lp_id,
        name: claims.name.filter(|n| !n.trim().is_empty()),
    })
}

fn classify(error: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match error.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidIssuer | K::InvalidAudience => AuthError::WrongIssuerOrAudience,
        K::MissingRequiredClaim(claim) if claim == "iss" || claim == "aud" => {
            AuthError::WrongIssuerOrAudience
        }
        K::MissingRequiredClaim(claim) => AuthError::Malformed(format!("missing claim {claim}")),
        K::InvalidAlgorithm => AuthError::Algorithm("mismatch".into()),
        _ => AuthError::Malformed(error.to_string()),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dealmesh_runtime::config::MapSource;

    const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
    const HOUR: Duration = Duration::from_secs(3600);

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig::hs256(SECRET))
    }

    #[tokio::test]
    async fn a_valid_token_gives_its_principal() {
        let token = mint_hs256(SECRET, &Claims::new("alice", Role::Partner, HOUR));
        let p = auth().authenticate(&token).await.unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.role, Role::Partner);
        assert_eq!(p.lp_id, None);
        assert_eq!(p.actor().role, dealmesh_proto::v1::Role::Partner as i32);
    }

    #[tokio::test]
    async fn an_lp_acts_for_its_lp_id_or_its_subject() {
        let mut claims = Claims::lp("lp-7", HOUR);
        claims.sub = "user-42".into();
        let p = auth()
            .authenticate(&mint_hs256(SECRET, &claims))
            .await
            .unwrap();
        assert_eq!(p.lp_id.as_deref(), Some("lp-7"));
        claims.lp_id = None;
        let p = auth()
            .authenticate(&mint_hs256(SECRET, &claims))
            .await
            .unwrap();
        assert_eq!(p.lp_id.as_deref(), Some("user-42"));
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_their_reason() {
        let mut expired = Claims::new("alice", Role::Analyst, HOUR);
        expired.exp = now_secs() - 3600;
        assert_eq!(
            auth().authenticate(&mint_hs256(SECRET, &expired)).await,
            Err(AuthError::Expired)
        );
        let forged = mint_hs256(
            "another-secret-0123456789abcdef-012345",
            &Claims::new("alice", Role::Admin, HOUR),
        );
        assert_eq!(
            auth().authenticate(&forged).await,
            Err(AuthError::BadSignature)
        );
        let mut odd_role = Claims::new("alice", Role::Admin, HOUR);
        odd_role.role = "god".into();
        assert_eq!(
            auth().authenticate(&mint_hs256(SECRET, &odd_role)).await,
            Err(AuthError::UnknownRole("god".into()))
        );
        assert!(matches!(
            auth().authenticate("not-a-jwt").await,
            Err(AuthError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn metadata_needs_a_bearer_header() {
        let mut metadata = MetadataMap::new();
        let status = auth().from_metadata(&metadata).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("missing bearer token"));
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        let status = auth().from_metadata(&metadata).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let token = mint_hs256(SECRET, &Claims::new("svc", Role::Service, HOUR));
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(
            auth().from_metadata(&metadata).await.unwrap().role,
            Role::Service
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        let mut config = AuthConfig::hs256(SECRET);
        config.issuer = Some("https://id.example".into());
        config.audience = Some("dealmesh".into());
        let auth = Authenticator::new(&config);
        let mut claims = Claims::new("alice", Role::Partner, HOUR);
        assert_eq!(
            auth.authenticate(&mint_hs256(SECRET, &claims)).await,
            Err(AuthError::WrongIssuerOrAudience),
            "a token without iss/aud is refused when they are configured"
        );
        claims.iss = Some("https://id.example".into());
        claims.aud = Some("dealmesh".into());
        assert!(
            auth.authenticate(&mint_hs256(SECRET, &claims))
                .await
                .is_ok()
        );
        claims.aud = Some("another-app".into());
        assert_eq!(
            auth.authenticate(&mint_hs256(SECRET, &claims)).await,
            Err(AuthError::WrongIssuerOrAudience)
        );
    }

    #[test]
    fn require_names_the_role_and_action() {
        let p = Principal {
            subject: "x".into(),
            role: Role::Lp,
            lp_id: Some("x".into()),
            name: None,
        };
        assert!(require(&p, &[Role::Lp, Role::Partner], "vote").is_ok());
        let status = require(&p, &[Role::Partner], "move stages").unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "role lp may not move stages");
    }

    #[test]
    fn config_needs_a_way_to_verify_and_never_prints_the_secret() {
        let err = AuthConfig::from_source(&MapSource::default()).unwrap_err();
        assert_eq!(err.key, JWT_HS256_SECRET);
        let err =
            AuthConfig::from_source(&MapSource::new([(JWT_HS256_SECRET, "short")])).unwrap_err();
        assert_eq!(err.key, JWT_HS256_SECRET);
        let err =
            AuthConfig::from_source(&MapSource::new([(JWT_JWKS_URL, "ftp://x")])).unwrap_err();
        assert_eq!(err.key, JWT_JWKS_URL);
        let config =
            AuthConfig::from_source(&MapSource::new([(JWT_HS256_SECRET, SECRET)])).unwrap();
        assert!(!format!("{config:?}").contains(SECRET));
    }
}
