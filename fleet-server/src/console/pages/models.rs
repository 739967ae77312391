//! The model registry: bundles and their versions (signer, size, who runs them), delta
//! sizes by method, trusted keys; bundle upload with progress (a refused bundle says why).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::html;

use super::{or_error, session};
use crate::console::layout::{self, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::service::views::{BundleOut, DeltaOut};
use crate::store::now_ms;
use crate::types::Role;

pub async fn page(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let a = c.service.acting(s.principal.clone());
    let title = "Models";
    let bundles = or_error!(a.bundles().await, s, Nav::Models, title);
    let keys = or_error!(a.keys().await, s, Nav::Models, title);
    let mut by_name: BTreeMap<&str, Vec<&BundleOut>> = BTreeMap::new();
    for b in &bundles {
        by_name.entry(b.row.name.as_str()).or_default().push(b);
    }
    let mut deltas: BTreeMap<&str, Vec<DeltaOut>> = BTreeMap::new();
    for name in by_name.keys() {
        deltas.insert(
            name,
            or_error!(a.bundle_deltas(name).await, s, Nav::Models, title),
        );
    }
    let now = now_ms();
    let role = s.principal.role;
    let methods = [
        "full",
        "zstd-full",
        "bsdiff-zstd",
        "zstd-patch-from",
        "tensor-xor-zstd",
    ];
    let upload = html! {
        @if role >= Role::Operator {
            section.actions aria-labelledby="h-upload" {
                h2 #h-upload { "Upload a bundle" }
                p.muted { "A signed bundle (" code { "edge-agent bundle pack" } "): its signature must verify against a trusted key and its version number must be above every stored version of its name. A refused bundle is not stored." }
                form #upload.upload data-url="/v1/operator/bundles" {
                    label for="bundle-file" { "Bundle file" }
                    input #bundle-file type="file" name="bundle" required;
                    button type="submit" { "Upload" }
                    progress #upload-progress max="100" value="0" aria-label="Upload progress" hidden {}
                    span #upload-status role="status" aria-live="polite" {}
                }
            }
        }
    };
    let body = html! {
        (upload)
        (live(&uri, html! {
            @if by_name.is_empty() {
                p.muted { "No bundle stored yet." }
            }
            @for (name, versions) in &by_name {
                section aria-labelledby={"h-b-" (name)} {
                    h2 id={"h-b-" (name)} { (name) }
                    @if let Some(d) = versions.last().and_then(|v| v.description.clone()) { p { (d) } }
                    (table_wrap(&format!("Versions of {name}"), html! { table {
                        thead { tr {
                            th scope="col" { "#" } th scope="col" { "Version" } th scope="col" { "Size" }
                            th scope="col" { "Signer" } th scope="col" { "Pushed" } th scope="col" { "Running on" }
                            th scope="col" { "SHA-256" }
                            @if role >= Role::Operator { th scope="col" { span.visually-hidden { "Actions" } } }
                        } }
                        tbody { @for v in versions.iter().rev() { tr {
                            td.num { (v.row.version_number) } td { (v.row.version) }
                            td.num { (fmt::bytes(v.row.size)) }
                            td.mono { (v.row.signer) }
                            td { (fmt::when(Some(v.row.pushed_at), now)) " by " (v.row.pushed_by) }
                            td.num { a href={"/console/devices?bundle=" (crate::drift::percent_encode(&format!("{}#{}", v.row.name, v.row.version_number)))} { (v.running) " devices" } }
                            td.mono title=(v.row.sha256) { (fmt::short_sha(&v.row.sha256)) "…" }
                            @if role >= Role::Operator {
                                td { a href={"/console/rollouts?bundle=" (crate::drift::percent_encode(name)) "&version_number=" (v.row.version_number) "#start"} { "Roll out…" } }
                            }
                        } } }
                    } }))
                    @if let Some(cols) = versions.last().map(|v| &v.columns) {
                        p.muted { "Features: " (cols.join(", ")) }
                    }
                    @let ds = deltas.get(name).cloned().unwrap_or_default();
                    @if !ds.is_empty() {
                        h3 { "Deltas" }
                        (table_wrap(&format!("Deltas of {name}"), html! { table {
                            thead { tr {
                                th scope="col" { "From → to" } th scope="col" { "Chosen" }
                                @for m in methods { th scope="col" { (m.replace('_', " ")) } }
                            } }
                            tbody { @for d in &ds { tr {
                                td { (d.from_version_number.map_or("(other)".to_string(), |v| format!("#{v}"))) " → #" (d.to_version_number) }
                                td { (d.method) " (" (fmt::bytes(d.size)) ")" }
                                @for m in methods { td.num { (d.sizes.get(m).map_or("–".to_string(), |n| fmt::bytes(*n as i64))) } }
                            } } }
                        } }))
                    }
                }
            }
            section aria-labelledby="h-keys" {
                h2 #h-keys { "Trusted signing keys" }
                @if keys.is_empty() { p.muted { "None: no bundle can be pushed until an admin trusts a key." } }
                ul.plain { @for k in &keys { li { span.mono { (k.key_id) } " · added by " (k.added_by) " " (fmt::when(Some(k.added_at), now)) } } }
            }
        }))
        @if role >= Role::Admin {
            section.actions aria-labelledby="h-trust" {
                h2 #h-trust { "Trust a signing key" }
                form.api data-url="/v1/operator/keys" data-method="POST" data-confirm="Trust this key? Any bundle it signs can be rolled out to the fleet." {
                    label for="pem" { "ed25519 public key (PEM)" }
                    textarea #pem name="public_pem" rows="4" required placeholder="-----BEGIN PUBLIC KEY-----" {}
                    button type="submit" { "Trust key" }
                }
            }
        }
    };
    layout::page(&s, Nav::Models, title, body)
}
