//! The web page at `/`: the concerts, a live seat map, sign-up and log-in, holds, orders and tickets with their QR
//! codes. Three static files (`api/static/`) are compiled into the binary, so a node serves its page with no files
//! beside it and no build step; the page talks to the same JSON API as every other client.
//!
//! Each file goes out with a strict Content-Security-Policy: scripts, styles and connections from this origin only,
//! images also from `blob:` (the QR codes, fetched with the bearer token) and `data:`, no framing. The page has no
//! inline script or style, so nothing injected into it could run. `cache-control: no-cache` makes a browser
//! revalidate, so a new binary's page is what it shows.

use axum::http::{HeaderName, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../static/index.html");
const APP_JS: &str = include_str!("../../static/app.js");
const APP_CSS: &str = include_str!("../../static/app.css");

/// What the page may load and from where; see the module comment.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// The page itself.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The page's script, an ES module.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The page's stylesheet.
pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy forbids inline code: the page must not need any, or it would be blank.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let lower = INDEX_HTML.to_ascii_lowercase();
        assert!(!lower.contains("<style"), "no <style> element");
        assert!(!lower.contains(" style="), "no style attribute");
        assert!(!lower.contains("javascript:"), "no javascript: URL");
        for (at, _) in lower.match_indices("<script") {
            let tag = &lower[at..at + lower[at..].find('>').expect("a closed tag")];
            assert!(
                tag.contains(" src=\"/"),
                "every script is a file of this origin: {tag}"
            );
        }
        for (at, _) in lower.match_indices(" on") {
            let name: String = lower[at + 1..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            assert!(
                !lower[at + 1 + name.len()..].starts_with('='),
                "no inline event handler ({name})"
            );
        }
        assert!(INDEX_HTML.contains("src=\"/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/app.css\""));
    }

    /// The hooks that the browser test and anyone scripting the page rely on.
    #[test]
    fn the_page_has_its_stable_hooks() {
        for id in [
            "hold",
            "proceed",
            "cancel",
            "message",
            "remaining",
            "seatmap",
        ] {
            assert!(
                INDEX_HTML.contains(&format!("id=\"{id}\"")),
                "an element with id {id}"
            );
        }
        assert!(INDEX_HTML.contains("aria-live="), "messages are announced");
        assert!(APP_JS.contains("data-status") || APP_JS.contains("dataset.status"));
    }

    #[test]
    fn the_policy_is_strict() {
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
