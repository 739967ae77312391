//! [`FleetClient`]: HTTPS to the fleet server — one keep-alive HTTP/1.1 connection over
//! rustls (client certificate once enrolled), every request bounded by a timeout, and a
//! dropped connection simply re-established on the next request.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use edge_wire::sync;

/// Why a request to the fleet server failed. Only [`ClientError::is_refusal`] errors need an
/// operator; the others are worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection: TCP connect, TLS handshake or HTTP handshake failed (`host:port`, reason).
    #[error("cannot reach the fleet server {0}: {1}")]
    Connect(String, String),
    /// The request (path) did not complete within the client's timeout.
    #[error("request to {0} timed out")]
    Timeout(String),
    /// An HTTP or local file error during the exchange (path or file, reason).
    #[error("{0}: {1}")]
    Http(String, String),
    /// The server answered with an error status.
    #[error("{path}: server said {status}: {message}")]
    Status {
        /// The request path.
        path: String,
        /// The error status.
        status: StatusCode,
        /// The start of the body (at most 500 characters).
        message: String,
    },
    /// The reply could not be decoded, or broke the transfer's terms (path, reason).
    #[error("{0}: bad reply: {1}")]
    Reply(String, String),
}

impl ClientError {
    /// 4xx: retrying the same request will not help (the operator must act).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if status.is_client_error())
    }
}

/// Where the server is: `https://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host name or IP address (without brackets), as given.
    pub host: String,
    /// TCP port; 443 when the URL names none.
    pub port: u16,
}

impl ServerUrl {
    /// Parses `https://host[:port]` (port default 443; IPv6 in brackets). Anything else, a path
    /// or plain `http://` included, is an error naming the problem.
    pub fn parse(s: &str) -> Result<ServerUrl, ServerUrlError> {
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| ServerUrlError::NotHttps(s.to_string()))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(ServerUrlError::Path(s.to_string()));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>().map_err(|_| ServerUrlError::Port {
                    url: s.to_string(),
                    port: p.to_string(),
                })?,
            ),
            _ => (rest.to_string(), 443),
        };
        Ok(ServerUrl { host, port })
    }
}

/// Why `[sync] server` is not a fleet server address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerUrlError {
    /// Not `https://`.
    #[error("`{0}` must start with https:// (the fleet API is TLS only)")]
    NotHttps(String),
    /// Empty host, or a path after it.
    #[error("`{0}` must be https://host[:port] without a path")]
    Path(String),
    /// The port is not a number in 1-65535.
    #[error("`{url}`: `{port}` is not a port")]
    Port {
        /// The address as given.
        url: String,
        /// The part after the last `:`.
        port: String,
    },
}

/// An HTTPS client of the fleet server's device API: one kept HTTP/1.1 connection with mutual
/// TLS, reconnected on demand. Not shared: one task owns it.
pub struct FleetClient {
    url: ServerUrl,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl std::fmt::Debug for FleetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetClient")
            .field("url", &self.url)
            .finish()
    }
}

/// A reply: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The reply headers.
    pub headers: hyper::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl FleetClient {
    /// A client of `url` with `tls` (the device certificate, the fleet CA); `timeout` bounds
    /// connecting and each request. No connection is made until the first request.
    pub fn new(url: ServerUrl, tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Self {
        FleetClient {
            url,
            tls,
            timeout,
            conn: None,
        }
    }

    /// Drops the connection (the next request reconnects).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn connect(&mut self) -> Result<(), ClientError> {
        let target = format!("{}:{}", self.url.host, self.url.port);
        let err = |e: String| ClientError::Connect(target.clone(), e);
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((self.url.host.as_str(), self.url.port)),
        )
        .await
        .map_err(|_| err("connect timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.url.host.clone()).map_err(|e| err(e.to_string()))?;
        let tls = tokio::time::timeout(
            self.timeout,
            TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| err("TLS handshake timed out".into()))?
        .map_err(|e| err(format!("TLS: {e}")))?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| err(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("fleet connection ended: {e}");
            }
        });
        self.conn = Some(send);
        Ok(())
    }

    /// One request; the whole exchange (including the body) is bounded by the timeout.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let r = tokio::time::timeout(
            self.timeout,
            self.request_inner(method, path, headers, body),
        )
        .await;
        match r {
            Ok(Ok(rep)) => Ok(rep),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(ClientError::Timeout(path.into()))
            }
        }
    }

    /// The kept connection if it is still usable, else a new one.
    async fn ready_conn(
        &mut self,
        path: &str,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
        let ready = match self.conn.as_mut() {
            Some(c) => c.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            self.connect().await?;
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ClientError::Connect(path.into(), "no connection".into()))
    }

    fn authority(&self) -> String {
        format!("{}:{}", self.url.host, self.url.port)
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, ClientError> {
        let host = self.authority();
        let conn = self.ready_conn(path).await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Http(path.into(), e.to_string()))?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(path.into(), e.to_string()))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(path.into(), e.to_string()))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Downloads `path` into `part`, resuming after the bytes `part` already holds (HTTP
    /// range). Bytes are appended as they arrive, so a cut connection loses nothing already
    /// received. The timeout applies to each wait for data, not to the whole transfer.
    /// `max_bytes_per_s` caps the rate; a transfer growing the file past `max_len` is cut.
    /// Returns the bytes received by this call.
    pub async fn download(
        &mut self,
        path: &str,
        part: &std::path::Path,
        max_len: u64,
        max_bytes_per_s: Option<u64>,
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let io_err =
            |e: std::io::Error| ClientError::Http(part.display().to_string(), e.to_string());
        let have = tokio::fs::metadata(part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let host = self.authority();
        let timeout = self.timeout;
        let conn = self.ready_conn(path).await?;
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", host);
        if have > 0 {
            req = req.header("range", format!("bytes={have}-"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Http(path.into(), e.to_string()))?;
        let resp = match tokio::time::timeout(timeout, conn.send_request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.conn = None;
                return Err(ClientError::Http(path.into(), e.to_string()));
            }
            Err(_) => {
                self.conn = None;
                return Err(ClientError::Timeout(path.into()));
            }
        };
        let status = resp.status();
        let mut file = match status {
            StatusCode::PARTIAL_CONTENT => tokio::fs::OpenOptions::new()
                .append(true)
                .open(part)
                .await
                .map_err(io_err)?,
            StatusCode::OK => tokio::fs::File::create(part).await.map_err(io_err)?,
            StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => return Ok(0), // already complete
            s => {
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                return Err(ClientError::Status {
                    path: path.into(),
                    status: s,
                    message: String::from_utf8_lossy(&body).chars().take(500).collect(),
                });
            }
        };
        let mut body = resp.into_body();
        let started = std::time::Instant::now();
        let mut got = 0u64;
        loop {
            let frame = match tokio::time::timeout(self.timeout, body.frame()).await {
                Ok(Some(Ok(f))) => f,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    self.conn = None;
                    file.flush().await.map_err(io_err)?;
                    return Err(ClientError::Http(
                        path.into(),
                        format!("transfer cut after {got} bytes: {e}"),
                    ));
                }
                Err(_) => {
                    self.conn = None;
                    file.flush().await.map_err(io_err)?;
                    return Err(ClientError::Timeout(path.into()));
                }
            };
            if let Ok(data) = frame.into_data() {
                let start = if status == StatusCode::PARTIAL_CONTENT {
                    have
                } else {
                    0
                };
                if start + got + data.len() as u64 > max_len {
                    self.conn = None;
                    file.flush().await.map_err(io_err)?;
                    return Err(ClientError::Reply(
                        path.into(),
                        format!("more than the announced {max_len} bytes"),
                    ));
                }
                file.write_all(&data).await.map_err(io_err)?;
                got += data.len() as u64;
                if let Some(cap) = max_bytes_per_s.filter(|c| *c > 0) {
                    let due = Duration::from_secs_f64(got as f64 / cap as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        file.flush().await.map_err(io_err)?;
        file.sync_all().await.map_err(io_err)?;
        Ok(got)
    }

    /// POSTs a sync message and decodes the reply; error statuses become [`ClientError::Status`].
    pub async fn call<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        msg: &Req,
    ) -> Result<Rep, ClientError> {
        let r = self
            .request(
                Method::POST,
                path,
                &[
                    ("content-type", sync::CONTENT_TYPE.into()),
                    ("content-encoding", sync::CONTENT_ENCODING.into()),
                ],
                sync::encode(msg),
            )
            .await?;
        if !r.status.is_success() {
            return Err(ClientError::Status {
                path: path.into(),
                status: r.status,
                message: String::from_utf8_lossy(&r.body).chars().take(500).collect(),
            });
        }
        sync::decode(&r.body).map_err(|e| ClientError::Reply(path.into(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            ServerUrl::parse("https://fleet.example:8443").unwrap(),
            ServerUrl {
                host: "fleet.example".into(),
                port: 8443
            }
        );
        assert_eq!(ServerUrl::parse("https://10.0.0.1/").unwrap().port, 443);
        assert!(ServerUrl::parse("http://x")
            .unwrap_err()
            .to_string()
            .contains("https://"));
        assert!(ServerUrl::parse("https://x/api").is_err());
        assert!(ServerUrl::parse("https://x:99999").is_err());
    }
}
