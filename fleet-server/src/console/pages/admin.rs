//! Accounts: users and every API token (admins); your own tokens and password (everyone).

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use maud::{html, Markup};

use super::{or_error, session};
use crate::console::layout::{self, action, action_body, live, table_wrap, Nav};
use crate::console::{fmt, Console};
use crate::service::ServiceError;
use crate::store::{now_ms, ApiTokenRow};
use crate::types::Role;

fn tokens_table(tokens: &[ApiTokenRow], now: i64, show_user: bool) -> Markup {
    html! {
        @if tokens.is_empty() { p.muted { "No API token." } } @else {
            (table_wrap("API tokens", html! { table {
                thead { tr {
                    th scope="col" { "Id" } th scope="col" { "Name" }
                    @if show_user { th scope="col" { "User" } }
                    th scope="col" { "Role" } th scope="col" { "Expires" } th scope="col" { "Last used" }
                    th scope="col" { "State" } th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody { @for t in tokens { tr {
                    td.mono { (t.id) } td { (t.name) }
                    @if show_user { td { (t.user_name) } }
                    td { (t.role.as_str()) } td { (fmt::utc(t.expires_at)) } td { (fmt::when(t.last_used_at, now)) }
                    td { @if t.revoked_at.is_some() { "revoked" } @else if t.expires_at <= now { "expired" } @else { "valid" } }
                    td { @if t.revoked_at.is_none() && t.expires_at > now {
                        (action("DELETE", &format!("/v1/operator/tokens/{}", t.id), "Revoke", Some(&format!("Revoke the API token {} ({})? Scripts using it stop working.", t.id, t.name)), "danger"))
                    } }
                } } }
            } }))
        }
    }
}

fn token_form(role: Role, admin: bool) -> Markup {
    html! {
        form.api data-url="/v1/operator/tokens" data-method="POST" data-show="token" {
            div.grid {
                label { "Name " input type="text" name="name" required placeholder="ci-deploy"; }
                label { "Role "
                    select name="role" {
                        @for r in Role::ALL { @if *r <= role { option value=(r.as_str()) selected[*r == role] { (r.as_str()) } } }
                    }
                }
                label { "Valid for " input type="text" name="ttl" value="90d"; }
                @if admin { label { "For user " input type="text" name="user" placeholder="(yourself)"; } }
            }
            button type="submit" { "Create token" }
            p.token-out hidden role="status" { "New token (shown once, copy it now): " code.token-value {} }
        }
    }
}

pub async fn page(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let title = "Users & tokens";
    if s.principal.role < Role::Admin {
        return layout::error_page(
            &s,
            Nav::Admin,
            title,
            &ServiceError::Forbidden("users and tokens are for admins".into()),
        );
    }
    let a = c.service.acting(s.principal.clone());
    let users = or_error!(a.users().await, s, Nav::Admin, title);
    let tokens = or_error!(a.tokens().await, s, Nav::Admin, title);
    let now = now_ms();
    let body = html! {
        (live(&uri, html! {
            section aria-labelledby="h-users" {
                h2 #h-users { "Users" }
                (table_wrap("Users", html! { table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Created" }
                        th scope="col" { "Password changed" } th scope="col" { span.visually-hidden { "Actions" } }
                    } }
                    tbody { @for u in &users { tr {
                        td { (u.name) } td { (u.role.as_str()) }
                        td { (fmt::utc(u.created_at)) " by " (u.created_by) }
                        td { (fmt::when(Some(u.password_changed_at), now)) }
                        td.buttons {
                            @for r in Role::ALL { @if *r != u.role {
                                (action_body("PUT", &format!("/v1/operator/users/{}", u.name), &format!("Make {}", r.as_str()),
                                    Some(&format!("Make {} {} ({})?", u.name, r.as_str(), match r { Role::Viewer => "reads only", Role::Operator => "acts on the fleet", Role::Admin => "also manages accounts and keys" })),
                                    &format!("role-{}", r.as_str()), Some(&format!("{{\"role\":\"{}\"}}", r.as_str()))))
                            } }
                            @if u.name != s.principal.name {
                                (action("DELETE", &format!("/v1/operator/users/{}", u.name), "Remove",
                                    Some(&format!("Remove {}? Their sessions end and their API tokens are revoked.", u.name)), "danger"))
                            }
                        }
                    } } }
                } }))
            }
            section aria-labelledby="h-tokens" {
                h2 #h-tokens { "API tokens" }
                (tokens_table(&tokens, now, true))
            }
        }))
        section.actions aria-labelledby="h-adduser" {
            h2 #h-adduser { "Add a user" }
            form.api data-url="/v1/operator/users" data-method="POST" {
                div.grid {
                    label { "Name " input type="text" name="name" required autocomplete="off"; }
                    label { "Role "
                        select name="role" { @for r in Role::ALL { option value=(r.as_str()) selected[*r == Role::Operator] { (r.as_str()) } } }
                    }
                    label { "Password (at least " (crate::service::MIN_PASSWORD) " characters) "
                        input type="password" name="password" required minlength=(crate::service::MIN_PASSWORD) autocomplete="new-password"; }
                }
                button type="submit" { "Add user" }
            }
        }
        section.actions aria-labelledby="h-newtoken" {
            h2 #h-newtoken { "Create an API token" }
            (token_form(s.principal.role, true))
        }
    };
    layout::page(&s, Nav::Admin, title, body)
}

pub async fn account(State(c): State<Console>, headers: HeaderMap, uri: Uri) -> Response {
    let s = session!(c, headers, uri);
    let title = "Your account";
    let a = c.service.acting(s.principal.clone());
    let tokens: Vec<ApiTokenRow> = or_error!(a.tokens().await, s, Nav::Account, title)
        .into_iter()
        .filter(|t| t.user_name == s.principal.name)
        .collect();
    let now = now_ms();
    let body = html! {
        p { "Signed in as " strong { (s.principal.name) } " (" (s.principal.role.as_str()) "); this session ends " (fmt::utc(s.expires_at)) "." }
        (live(&uri, html! {
            section aria-labelledby="h-mytokens" {
                h2 #h-mytokens { "Your API tokens" }
                (tokens_table(&tokens, now, false))
            }
        }))
        section.actions aria-labelledby="h-mynewtoken" {
            h2 #h-mynewtoken { "Create an API token" }
            p.muted { "For scripts and the remote CLI: " code { "fleet-server --server https://… --token-file FILE …" } }
            (token_form(s.principal.role, false))
        }
        section.actions aria-labelledby="h-pw" {
            h2 #h-pw { "Change your password" }
            form.api data-url={"/v1/operator/users/" (s.principal.name)} data-method="PUT" data-after="signin" {
                div.grid {
                    label { "Current password " input type="password" name="current_password" required autocomplete="current-password"; }
                    label { "New password " input type="password" name="password" required minlength=(crate::service::MIN_PASSWORD) autocomplete="new-password"; }
                }
                button type="submit" { "Change password" }
            }
        }
    };
    layout::page(&s, Nav::Account, title, body)
}
