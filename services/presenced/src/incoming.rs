//! Admission of gRPC connections, before HTTP/2 sees them.
//!
//! Every accepted TCP connection takes one of `max_connections` slots
//! (refused at once when none is free, so idle sockets cannot exhaust
//! the process's file descriptors) and must send the 24-byte HTTP/2
//! client preface within `handshake_timeout`, or it is closed. Only then
//! is it handed to the gRPC server, with the preface replayed in front
//! of the rest of the stream. The slot is held until the connection
//! closes. Requests that send headers but no message are ended by the
//! server's request timeout (see `Server::run`).
//!
//! With TLS configured the TLS handshake comes first, within the same
//! `handshake_timeout`, and the preface is read through it; the
//! configuration in force at the moment of the handshake is used, so a
//! reloaded certificate applies to the next connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Limits of [`admit`].
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Time a new connection has to finish TLS and send the HTTP/2
    /// preface.
    pub handshake_timeout: Duration,
}

/// The transport under an admitted connection.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

macro_rules! io {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.io {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Io::Tls($io) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

/// A connection that sent its preface: reads replay the preface first.
pub struct Admitted {
    head: &'static [u8],
    io: Io,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head = &self.head[n..];
            return Poll::Ready(Ok(()));
        }
        io!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        io!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(self, io => io.poll_shutdown(cx))
    }
}

/// Accepts connections on `listener` until `shutdown`, and returns the
/// stream of admitted ones for `serve_with_incoming_shutdown`. The accept
/// loop and the per-connection handshakes run on `tracker`.
pub fn admit(
    listener: TcpListener,
    cfg: AdmissionConfig,
    tls: Option<Arc<crate::tls::ServerTls>>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Admitted>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let handshakes = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            let (io, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or the like: back off briefly
                    // instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!("presence_connections_refused_total", "reason" => "limit")
                    .increment(1);
                tracing::warn!(peer = %remote, "connection refused: connection limit reached");
                drop(io);
                continue;
            };
            let tx = tx.clone();
            let stop = shutdown.clone();
            let acceptor = tls.as_ref().map(|t| t.acceptor());
            handshakes.spawn(async move {
                let info = TcpConnectInfo {
                    local_addr: io.local_addr().ok(),
                    remote_addr: Some(remote),
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = tokio::time::timeout(cfg.handshake_timeout, handshake(io, acceptor)) => match r.unwrap_or(Err("handshake_timeout")) {
                        Ok(io) => {
                            let conn = Admitted { head: PREFACE, io, info, _slot: slot };
                            // The server stopped taking connections when
                            // the receiver is gone: nothing to do then.
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Err(why) => {
                            metrics::counter!("presence_connections_refused_total", "reason" => why)
                                .increment(1);
                            tracing::debug!(peer = %remote, why, "connection closed before serving");
                        }
                    },
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Does the TLS handshake (with `tls`) and reads the HTTP/2 preface;
/// returns why not otherwise.
async fn handshake(
    io: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<Io, &'static str> {
    if let Err(e) = io.set_nodelay(true) {
        tracing::debug!(error = %e, "set TCP_NODELAY failed");
    }
    let mut io = match tls {
        None => Io::Plain(io),
        Some(acceptor) => match acceptor.accept(io).await {
            Ok(s) => Io::Tls(Box::new(s)),
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                return Err("tls_handshake");
            }
        },
    };
    let mut got = [0u8; 24];
    let read = match &mut io {
        Io::Plain(s) => s.read_exact(&mut got).await,
        Io::Tls(s) => s.read_exact(&mut got).await,
    };
    match read {
        Err(_) => Err("closed"),
        Ok(_) if &got != PREFACE => Err("not_http2"),
        Ok(_) => Ok(io),
    }
}

/// Raises the soft limit on open files to the hard limit (at most 2^20;
/// a server with many phones and gateways needs far more than the usual
/// 1024) and returns the soft limit now in force (`None`: unlimited).
pub fn raise_fd_limit() -> io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    const CAP: u64 = 1 << 20;
    let lim = getrlimit(Resource::Nofile);
    let target = lim.maximum.unwrap_or(CAP).min(CAP);
    match lim.current {
        Some(cur) if cur < target => {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(target),
                    maximum: lim.maximum,
                },
            )
            .map_err(io::Error::from)?;
            Ok(Some(target))
        }
        other => Ok(other),
    }
}
