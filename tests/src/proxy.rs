//! A TCP proxy whose link can be cut, restored and throttled.

use std::time::{Duration, Instant};

/// A TCP proxy in front of a peer whose link can be cut and restored: a pulled network cable
/// between the agent and a broker or server, while the peer itself keeps running.
#[derive(Debug)]
pub struct TcpProxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Debug, Default)]
struct ProxyState {
    down: std::sync::atomic::AtomicBool,
    /// Bytes forwarded, both directions.
    bytes: std::sync::atomic::AtomicU64,
    conns: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl TcpProxy {
    pub fn start(target_port: u16) -> TcpProxy {
        Self::start_with_rate(target_port, None)
    }

    /// A proxy whose link carries at most `bytes_per_s` in each direction: a slow uplink,
    /// so a transfer is really in flight (not sitting in socket buffers) when it is cut.
    pub fn start_throttled(target_port: u16, bytes_per_s: u64) -> TcpProxy {
        Self::start_with_rate(target_port, Some(bytes_per_s))
    }

    fn start_with_rate(target_port: u16, rate: Option<u64>) -> TcpProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let state = std::sync::Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if st.down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let st2 = st.clone();
                let pipe = move |mut from: TcpStream, mut to: TcpStream| {
                    let st = st2.clone();
                    std::thread::spawn(move || {
                        match rate {
                            None => {
                                let _ = std::io::copy(&mut from, &mut to);
                            }
                            Some(r) => {
                                use std::io::{Read, Write};
                                let mut buf = vec![0u8; 4096];
                                // The link is free again at `free`; an idle connection
                                // earns no credit (a kept-alive connection reused for a
                                // download must not burst through at loopback speed).
                                let mut free = Instant::now();
                                while let Ok(n) = from.read(&mut buf) {
                                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                    st.bytes.fetch_add(n as u64, Ordering::Relaxed);
                                    free = free.max(Instant::now())
                                        + Duration::from_secs_f64(n as f64 / r as f64);
                                    std::thread::sleep(
                                        free.saturating_duration_since(Instant::now()),
                                    );
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                };
                if let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) {
                    if let Ok(mut conns) = st.conns.lock() {
                        conns.push(c2);
                        conns.push(u2);
                    }
                    if let (Ok(c3), Ok(u3)) = (client.try_clone(), upstream.try_clone()) {
                        pipe(c3, upstream);
                        pipe(u3, client);
                    }
                }
            }
        });
        TcpProxy { port, state }
    }

    /// Bytes forwarded so far in both directions (counted on throttled proxies only).
    pub fn bytes(&self) -> u64 {
        self.state.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cuts every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut conns) = self.state.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    pub fn restore(&self) {
        self.state
            .down
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
