//! Identifiers for matching: normalisation of what channels send, and the
//! reservation stream each identifier is claimed through.

use proto::customer::Identifier;
use proto::inbound::RawIdentifier;
use proto::normalize;
use sha2::{Digest, Sha256};

/// Kinds whose value is only unique within a scope (AppID, shop, source).
const SCOPED_KINDS: &[&str] = &[
    "wechat_openid",
    "youzan_uid",
    "youzan_fans_id",
    "shopify_customer",
    "buyer_open_uid",
    "ouid",
    "external",
];

/// Why an identifier was not used for matching (kept in the activity anyway).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("identifier kind {kind:?} needs a scope (AppID, shop or source), none given")]
    MissingScope { kind: String },
    #[error(transparent)]
    Value(#[from] normalize::NormalizeError),
}

/// Normalises one raw identifier for matching.
pub fn normalise(raw: &RawIdentifier, region: phonenumber::country::Id) -> Result<Identifier, IdentifierError> {
    let kind = raw.kind.trim().to_ascii_lowercase();
    let normalized = match kind.as_str() {
        "phone" => normalize::phone(&raw.value, region)?,
        "email" => normalize::email(&raw.value)?,
        _ => {
            let v = normalize::nfkc(&raw.value);
            if v.is_empty() {
                return Err(normalize::NormalizeError::Empty.into());
            }
            if v.contains("****") {
                return Err(normalize::NormalizeError::Masked(raw.value.clone()).into());
            }
            v
        }
    };
    let scope = normalize::nfkc(&raw.scope);
    if SCOPED_KINDS.contains(&kind.as_str()) && scope.is_empty() {
        return Err(IdentifierError::MissingScope { kind });
    }
    Ok(Identifier {
        kind,
        normalized,
        raw: raw.value.clone(),
        scope,
    })
}

/// Stable text key of an identifier: `kind:scope:value` (scope empty for global kinds).
pub fn key(id: &Identifier) -> String {
    [id.kind.as_str(), ":", &id.scope, ":", &id.normalized].concat()
}

/// The reservation stream that decides who owns an identifier.
pub fn reservation_stream(id: &Identifier) -> String {
    reservation_of_key(&id.kind, &key(id))
}

/// [`reservation_stream`] of an identifier of `kind` whose [`key`] is `key`.
pub fn reservation_of_key(kind: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    ["identity-", kind, "-", &hex::encode(&digest[..16])].concat()
}

/// Stream of a customer.
pub fn customer_stream(customer_id: &str) -> String {
    ["customer-", customer_id].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id::CN;

    fn raw(kind: &str, value: &str, scope: &str) -> RawIdentifier {
        RawIdentifier {
            kind: kind.into(),
            value: value.into(),
            scope: scope.into(),
        }
    }

    #[test]
    fn same_person_written_differently_gets_one_reservation() {
        let a = normalise(&raw("phone", "138 0013 8000", ""), CN).unwrap();
        let b = normalise(&raw("phone", "+86１３８００１３８０００", ""), CN).unwrap();
        assert_eq!(reservation_stream(&a), reservation_stream(&b));
        assert_eq!(a.raw, "138 0013 8000");
    }

    #[test]
    fn openids_never_match_across_appids() {
        let a = normalise(&raw("wechat_openid", "oABC", "wx1"), CN).unwrap();
        let b = normalise(&raw("wechat_openid", "oABC", "wx2"), CN).unwrap();
        assert_ne!(reservation_stream(&a), reservation_stream(&b));
        assert!(matches!(
            normalise(&raw("wechat_openid", "oABC", ""), CN),
            Err(IdentifierError::MissingScope { .. })
        ));
        assert!(normalise(&raw("phone", "138****8000", ""), CN).is_err());
    }
}
