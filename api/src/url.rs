//! Coordinator base URLs: the one check the CLI, the client and the
//! coordinators apply to an address peers, hosts and clients will connect to.

/// The form a coordinator base URL takes, for error messages.
pub const BASE_URL_FORM: &str = "http://HOST:PORT or https://HOST:PORT";

/// True when `url` is a coordinator base URL: `http://` or `https://`, then
/// a host, and no whitespace anywhere.
pub fn is_http_url(url: &str) -> bool {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
}

/// A coordinator base URL as a person gave it: surrounding whitespace and
/// trailing slashes are dropped, so `http://a:1/` is `http://a:1`.
pub fn parse_base_url(value: &str) -> Result<String, BadUrl> {
    let url = value.trim().trim_end_matches('/');
    if is_http_url(url) {
        Ok(url.to_string())
    } else {
        Err(BadUrl(value.to_string()))
    }
}

/// A value that is not a coordinator base URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a coordinator URL (expected {BASE_URL_FORM})")]
pub struct BadUrl(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_pass() {
        for good in [
            "http://a:1",
            "https://a:1",
            "http://a:1/v1",
            "http://[::1]:8787",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "",
            "a:1",
            "ftp://a:1",
            "http://",
            "https://",
            "http:/a:1",
            "HTTP://a:1",
            " http://a:1",
            "http://a b:1",
        ] {
            assert!(!is_http_url(bad), "{bad:?}");
        }
    }

    #[test]
    fn parsing_drops_surrounding_space_and_trailing_slashes() {
        assert_eq!(parse_base_url(" http://a:1// ").unwrap(), "http://a:1");
        assert_eq!(parse_base_url("https://a:1").unwrap(), "https://a:1");
        let err = parse_base_url("http:///").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"http:///\" is not a coordinator URL (expected http://HOST:PORT or https://HOST:PORT)"
        );
    }
}
