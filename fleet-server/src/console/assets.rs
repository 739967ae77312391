//! The console's static files, embedded in the binary: the vendored htmx and uPlot (see
//! `fleet-server/assets/vendor/README.md` for versions and licences) and our own stylesheet
//! and script. URLs carry a content hash (`?v=`), so browsers may cache them for good.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "htmx.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/vendor/htmx-2.0.11.min.js"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/vendor/uPlot-1.6.32.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/vendor/uPlot-1.6.32.min.css"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../assets/console.css"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../assets/console.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../assets/favicon.svg"),
    },
    Asset {
        name: "licenses.txt",
        content_type: "text/plain; charset=utf-8",
        bytes: concat!(
            "The fleet console embeds:\n\nhtmx 2.0.11 (https://htmx.org), Zero-Clause BSD:\n\n",
            include_str!("../../assets/vendor/htmx-LICENSE"),
            "\n\nuPlot 1.6.32 (https://github.com/leeoniya/uPlot), MIT:\n\n",
            include_str!("../../assets/vendor/uPlot-LICENSE"),
        )
        .as_bytes(),
    },
];

fn hashes() -> &'static Vec<String> {
    static H: OnceLock<Vec<String>> = OnceLock::new();
    H.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| edge_wire::bundle::file::hex(&Sha256::digest(a.bytes))[..12].to_string())
            .collect()
    })
}

/// The URL of an embedded asset, with its content hash.
pub fn url(name: &str) -> String {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => format!("/console/assets/{name}?v={}", hashes()[i]),
        None => format!("/console/assets/{name}"),
    }
}

pub async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => (
            [
                (header::CONTENT_TYPE, ASSETS[i].content_type.to_string()),
                (
                    header::CACHE_CONTROL,
                    "public, max-age=31536000, immutable".into(),
                ),
                (header::ETAG, format!("\"{}\"", hashes()[i])),
            ],
            ASSETS[i].bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
