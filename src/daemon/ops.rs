//! The ops listener on `metrics_listen`: a small HTTP/1.1 server for `/metrics` (the
//! node's registry, rendered by [`crate::metrics`]), `/health` (the process answers) and
//! `/ready` ([`crate::node::ops::readiness`]), and the ticker that runs the node's
//! collectors.
//!
//! It owns the HTTP handling: one request per connection, a bounded head, a timeout. It does
//! not own what the answers say (the metrics and the node's ops module do).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::OpsConfig;
use crate::node::{ops, Node};
use crate::shutdown::Shutdown;

/// Serves `/metrics`, `/health` and `/ready` on `listener` and runs the collectors every
/// `ops.collect_interval_ms`, until `shutdown` is signalled. Each request's task is spawned on
/// `shutdown`.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: Shutdown) {
    let limits = node.config().ops.clone();
    let mut collect = tokio::time::interval(Duration::from_millis(limits.collect_interval_ms));
    collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.signalled() => break,
            _ = collect.tick() => ops::collect(&node),
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let (node, signal, limits) = (node.clone(), shutdown.clone(), limits.clone());
                    shutdown.spawn(async move { answer(&node, &signal, &limits, socket).await });
                }
                Err(failure) => {
                    tracing::warn!(%failure, "accepting an ops connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Answers one HTTP request, then closes the connection.
async fn answer(node: &Node, shutdown: &Shutdown, limits: &OpsConfig, mut socket: TcpStream) {
    let timeout = Duration::from_millis(limits.http_request_timeout_ms);
    let head = tokio::time::timeout(
        timeout,
        read_head(&mut socket, limits.http_request_bytes_max),
    )
    .await;
    let (status, content_type, body) = match head {
        Ok(Some(head)) => route(node, shutdown, &head),
        _ => (400, "text/plain", "bad request\n".to_owned()),
    };
    let _ = socket
        .write_all(&http_response(status, content_type, &body))
        .await;
    let _ = socket.shutdown().await;
}

/// Reads a request head (up to the blank line), or `None` if it is longer than `bytes_max`
/// or cut short.
async fn read_head(socket: &mut TcpStream, bytes_max: usize) -> Option<String> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 || buffer.len() + read > bytes_max {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8(buffer).ok()
}

/// The status, content type and body for a request head.
fn route(node: &Node, shutdown: &Shutdown, head: &str) -> (u16, &'static str, String) {
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return (405, "text/plain", "only GET is served here\n".into());
    }
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            crate::metrics::node(node.id()).render(),
        ),
        "/health" => (200, "text/plain", "ok\n".into()),
        "/ready" => {
            let ready = if shutdown.is_signalled() {
                Err("shutting down".to_owned())
            } else {
                ops::readiness(node)
            };
            match ready {
                Ok(()) => (200, "text/plain", "ready\n".into()),
                Err(reason) => (503, "text/plain", format!("not ready: {reason}\n")),
            }
        }
        _ => (
            404,
            "text/plain",
            "not found; try /metrics, /health or /ready\n".into(),
        ),
    }
}

fn http_response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body.as_bytes());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_carry_their_length() {
        let response = String::from_utf8(http_response(503, "text/plain", "not ready\n")).unwrap();
        assert!(response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(response.contains("Content-Length: 10\r\n"));
        assert!(response.ends_with("\r\n\r\nnot ready\n"));
    }
}
