//! Gateways on the wire: the reverse proxies anyone may run register here
//! with heartbeats, and clients list the live ones to find a way in.

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::url::is_http_url;

/// How long a gateway stays listed after its last heartbeat. Gateways are
/// run by people the cluster does not trust, so one that stops (crashes,
/// loses its network, is switched off) must leave the list on its own,
/// soon enough that clients are not sent to it for long.
pub const GATEWAY_TTL_MS: u64 = 30_000;

/// How often a gateway heartbeats: a third of the TTL, so two lost
/// heartbeats in a row are survived.
pub const GATEWAY_HEARTBEAT_INTERVAL_MS: u64 = 10_000;
const _: () = assert!(3 * GATEWAY_HEARTBEAT_INTERVAL_MS <= GATEWAY_TTL_MS);

/// Longest gateway id: a name its operator picks, not a document.
pub const MAX_GATEWAY_ID_LEN: usize = 64;

/// Longest public URL, as base URLs go: enough for any host name and a
/// port, short enough that a hostile gateway cannot bloat every list.
pub const MAX_GATEWAY_URL_LEN: usize = 512;

/// Most live gateways one API key may hold, so that a hostile key cannot
/// flood the list clients read. The cluster token is not limited.
pub const MAX_GATEWAYS_PER_KEY: usize = 16;

/// Most gateways `GET /v1/gateways` lists: a bound on the answer whatever
/// many keys register.
pub const MAX_GATEWAY_LIST: usize = 1000;

/// `POST /v1/gateways/heartbeat`: register or renew a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayHeartbeat {
    /// The gateway's name, chosen by its operator: 1 to
    /// [`MAX_GATEWAY_ID_LEN`] of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`.
    pub id: String,
    /// Where clients reach the gateway: an http(s) base URL.
    pub public_url: String,
}

impl GatewayHeartbeat {
    /// Checks the id and the URL; the message names the offending field.
    pub fn validate(&self) -> Result<(), InvalidGateway> {
        validate_gateway_id(&self.id)?;
        let url = &self.public_url;
        let ok = url.len() <= MAX_GATEWAY_URL_LEN
            && url.chars().all(|c| c.is_ascii_graphic())
            && is_http_url(url);
        if !ok {
            return Err(InvalidGateway(format!(
                "public_url must be an http:// or https:// URL of at most \
                 {MAX_GATEWAY_URL_LEN} visible ASCII characters"
            )));
        }
        Ok(())
    }
}

/// A gateway id is 1 to [`MAX_GATEWAY_ID_LEN`] of `A-Z`, `a-z`, `0-9`,
/// `.`, `_` and `-`.
pub fn validate_gateway_id(id: &str) -> Result<(), InvalidGateway> {
    let ok = !id.is_empty()
        && id.len() <= MAX_GATEWAY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(InvalidGateway(format!(
            "id must be 1 to {MAX_GATEWAY_ID_LEN} of A-Z, a-z, 0-9, '.', '_' and '-'"
        )))
    }
}

/// A heartbeat that fails validation; the message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidGateway(pub String);

/// One live gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub id: String,
    pub public_url: String,
    /// The first heartbeat of this registration.
    pub registered_at: Millis,
    /// The latest heartbeat.
    pub last_seen: Millis,
    /// When the gateway leaves the list unless it heartbeats again.
    pub expires_at: Millis,
}

impl Gateway {
    /// When a gateway seen at `last_seen` expires.
    pub fn expiry(last_seen: Millis) -> Millis {
        last_seen.saturating_add(GATEWAY_TTL_MS)
    }

    /// Whether the gateway is still listed at `now`.
    pub fn is_live(&self, now: Millis) -> bool {
        self.expires_at > now
    }
}

/// `GET /v1/gateways`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayList {
    pub gateways: Vec<Gateway>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, url: &str) -> GatewayHeartbeat {
        GatewayHeartbeat {
            id: id.into(),
            public_url: url.into(),
        }
    }

    #[test]
    fn ids_and_urls_are_checked() {
        assert!(
            beat("gw-1.eu_west", "https://gw.example.org")
                .validate()
                .is_ok()
        );
        assert!(beat("G", "http://10.0.0.1:8080").validate().is_ok());
        let long_id = "a".repeat(MAX_GATEWAY_ID_LEN + 1);
        for bad_id in ["", "a b", "a/b", "é", long_id.as_str()] {
            let err = beat(bad_id, "http://a:1").validate().unwrap_err();
            assert!(err.0.starts_with("id must be"), "{bad_id:?}: {err}");
        }
        let long_url = format!("http://{}", "a".repeat(MAX_GATEWAY_URL_LEN));
        for bad_url in [
            "",
            "ftp://a",
            "http://",
            "http://a b",
            "http://a\u{1}",
            "http://é",
            &long_url,
        ] {
            let err = beat("g", bad_url).validate().unwrap_err();
            assert!(
                err.0.starts_with("public_url must be"),
                "{bad_url:?}: {err}"
            );
        }
    }

    #[test]
    fn a_gateway_is_live_until_its_ttl_after_the_last_heartbeat() {
        let gateway = Gateway {
            id: "g".into(),
            public_url: "http://a:1".into(),
            registered_at: 1_000,
            last_seen: 5_000,
            expires_at: Gateway::expiry(5_000),
        };
        assert_eq!(gateway.expires_at, 5_000 + GATEWAY_TTL_MS);
        assert!(gateway.is_live(5_000));
        assert!(gateway.is_live(5_000 + GATEWAY_TTL_MS - 1));
        assert!(!gateway.is_live(5_000 + GATEWAY_TTL_MS));
        assert_eq!(Gateway::expiry(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_heartbeat_refuses_unknown_fields() {
        let err = serde_json::from_str::<GatewayHeartbeat>(
            r#"{"id":"g","public_url":"http://a:1","owner":"me"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("owner"), "{err}");
    }
}
