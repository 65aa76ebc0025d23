//! Webhook signatures, Stripe-style:
//! `X-Dealmesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! under the subscription's secret. The timestamp is signed too, so a
//! receiver that rejects old timestamps (see [`verify`]) cannot be replayed
//! an old request.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "x-dealmesh-signature";
/// The delivery's id, the same on every retry: receivers deduplicate on it.
pub const DELIVERY_ID_HEADER: &str = "x-dealmesh-delivery-id";
/// 1 on the first try, 2 on the first retry, ...
pub const ATTEMPT_HEADER: &str = "x-dealmesh-attempt";

type HmacSha256 = hmac::Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(digest))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature header is malformed: expected t=<unix>,v1=<hex>")]
    Malformed,
    #[error("signature timestamp is {0}s away from now, outside the tolerance")]
    Stale(i64),
    #[error("signature does not match")]
    Mismatch,
}

/// What a receiver does: checks that the header signs `body` under `secret`
/// and that its timestamp is within `tolerance_secs` of `now` (unix seconds).
/// Comparison is constant-time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| VerifyError::Malformed)?)
            }
            Some(("v1", hex_sig)) => {
                signatures.push(hex::decode(hex_sig).map_err(|_| VerifyError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let skew = (now - timestamp).abs();
    if skew > tolerance_secs {
        return Err(VerifyError::Stale(skew));
    }
    let expected = mac(secret, timestamp, body);
    if signatures
        .iter()
        .any(|sig| expected.clone().verify_slice(sig).is_ok())
    {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_tampering_does_not() {
        let header = sign(b"secret-0123456789", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify(
                b"secret-0123456789",
                &header,
                b"{\"a\":1}",
                1_700_000_010,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                b"secret-0123456789",
                &header,
                b"{\"a\":2}",
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                b"other-secret-000000",
                &header,
                b"{\"a\":1}",
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                b"secret-0123456789",
                &header,
                b"{\"a\":1}",
                1_700_001_000,
                300
            ),
            Err(VerifyError::Stale(1000))
        );
        assert_eq!(
            verify(b"k", "v1=zz", b"", 0, 300),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn the_signature_matches_a_reference_hmac() {
        // echo -n '1700000000.hello' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign(b"key", 1_700_000_000, b"hello"),
            "t=1700000000,v1=4d583a269f4f276a3fa80ff31b5a01879a848096983222a17893d198418939aa"
        );
    }
}
