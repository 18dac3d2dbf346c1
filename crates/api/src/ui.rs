//! The web UI: a single page and its few assets, embedded in the binary (no Node.js at
//! build or run time; the vendored libraries are listed in `assets/vendor/README.md`).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    /// The URL path it is served at.
    path: &'static str,
    content_type: &'static str,
    cache_control: &'static str,
    body: &'static [u8],
}

// The page is small and changes with every release: revalidate it. The vendored library
// carries its version in the URL, so it can be cached for a long time.
const NO_CACHE: &str = "no-cache";
const SHORT: &str = "public, max-age=300";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Every embedded file.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        cache_control: NO_CACHE,
        body: include_bytes!("../assets/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        cache_control: SHORT,
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        cache_control: SHORT,
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        path: "/ui/vendor/cytoscape-3.34.4.min.js",
        content_type: "text/javascript; charset=utf-8",
        cache_control: IMMUTABLE,
        body: include_bytes!("../assets/vendor/cytoscape.min.js"),
    },
    Asset {
        path: "/ui/vendor/cytoscape.LICENSE",
        content_type: "text/plain; charset=utf-8",
        cache_control: SHORT,
        body: include_bytes!("../assets/vendor/cytoscape.LICENSE"),
    },
];

fn serve(a: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, a.content_type),
            (header::CACHE_CONTROL, a.cache_control),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        a.body,
    )
        .into_response()
}

/// The UI's routes: `/` (the page) and `/ui/...` (its scripts, styles and libraries).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |r, a| {
        r.route(a.path, get(move || async move { serve(a) }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_only_embedded_assets() {
        let page = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        for src in page.split(['"', '\'']).filter(|s| s.starts_with("/ui/")) {
            assert!(
                ASSETS.iter().any(|a| a.path == src),
                "index.html references {src}, which is not embedded"
            );
        }
        assert!(page.contains("/ui/vendor/cytoscape-3.34.4.min.js"));
    }
}
