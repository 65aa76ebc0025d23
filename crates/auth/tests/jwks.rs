//! RS256 tokens verified with keys from an OIDC provider's JWKS endpoint,
//! served here by a local HTTP server with a fixed test key pair.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use dealmesh_auth::{AuthConfig, AuthError, Authenticator, Claims, Role, mint_hs256};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// A key pair made for these tests only; it protects nothing.
const TEST_PRIVATE_KEY: &str = include_str!("fixtures/test-rsa-key.pem");
const TEST_JWKS: &str = include_str!("fixtures/jwks.json");
const HOUR: Duration = Duration::from_secs(3600);

struct Provider {
    url: String,
    fetches: Arc<AtomicUsize>,
}

async fn provider() -> Provider {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let app = Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { ([("content-type", "application/json")], TEST_JWKS) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Provider {
        url: format!("http://{addr}/.well-known/jwks.json"),
        fetches,
    }
}

fn rs256(kid: &str, claims: &Claims) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_rsa_pem(TEST_PRIVATE_KEY.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn jwks_config(url: &str) -> AuthConfig {
    AuthConfig {
        hs256_secret: None,
        jwks_url: Some(url.parse().unwrap()),
        issuer: Some("https://id.example".into()),
        audience: Some("dealmesh".into()),
    }
}

fn claims(role: Role) -> Claims {
    let mut claims = Claims::new("carol", role, HOUR);
    claims.iss = Some("https://id.example".into());
    claims.aud = Some("dealmesh".into());
    claims
}

#[tokio::test]
async fn rs256_tokens_verify_against_the_providers_keys_fetched_once() {
    let provider = provider().await;
    let auth = Authenticator::new(&jwks_config(&provider.url));
    for _ in 0..3 {
        let principal = auth
            .authenticate(&rs256("test-key-1", &claims(Role::Analyst)))
            .await
            .expect("a token signed by the provider's key is accepted");
        assert_eq!(principal.subject, "carol");
        assert_eq!(principal.role, Role::Analyst);
    }
    assert_eq!(
        provider.fetches.load(Ordering::SeqCst),
        1,
        "keys are cached between tokens"
    );
}

#[tokio::test]
async fn unknown_key_ids_and_hs256_tokens_are_refused_under_jwks() {
    let provider = provider().await;
    let auth = Authenticator::new(&jwks_config(&provider.url));
    assert_eq!(
        auth.authenticate(&rs256("rotated-away", &claims(Role::Partner)))
            .await,
        Err(AuthError::UnknownKey("rotated-away".into()))
    );
    // Without a configured secret, an HS256 token must not be verified with
    // anything (the classic algorithm-confusion attack uses the public key).
    let hs = mint_hs256("any-secret-at-all-0123456789abcdef", &claims(Role::Admin));
    assert_eq!(
        auth.authenticate(&hs).await,
        Err(AuthError::Algorithm("HS256".into()))
    );
    // A second unknown kid right after does not hit the provider again.
    let before = provider.fetches.load(Ordering::SeqCst);
    let _ = auth
        .authenticate(&rs256("another-unknown", &claims(Role::Partner)))
        .await;
    assert_eq!(provider.fetches.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable_not_unauthenticated() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let auth = Authenticator::new(&jwks_config(&url));
    let error = auth
        .authenticate(&rs256("test-key-1", &claims(Role::Partner)))
        .await
        .unwrap_err();
    assert!(matches!(error, AuthError::KeysUnavailable(_)), "{error:?}");
    assert_eq!(tonic::Status::from(error).code(), tonic::Code::Unavailable);
}
