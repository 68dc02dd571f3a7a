//! Listeners: accept sockets and hand each to a session task.
//!
//! Only plain TCP today. TLS, WebSockets and the listener defences (connection limits, rate
//! limits, PROXY protocol) belong here too and arrive with the transport-security issue; the
//! session layer takes any `AsyncRead + AsyncWrite` stream, so they wrap the socket here
//! without touching it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::broker::Shared;

/// Accepts connections until shutdown.
pub async fn accept_loop(shared: Arc<Shared>, name: Arc<str>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((socket, remote)) => {
                shared.metrics.socket_accepted();
                // MQTT packets are small and latency matters more than batching.
                let _ = socket.set_nodelay(true);
                shared.spawn(crate::session::serve(
                    shared.clone(),
                    socket,
                    remote,
                    name.clone(),
                ));
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
