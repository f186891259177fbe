//! UDP sockets for QUIC endpoints that carry many connections. With the kernel's default
//! buffers (about 200 KiB) a burst of handshakes overflows the receive queue; every lost
//! handshake packet then waits out QUIC's growing retransmission timer, so thousands of
//! devices connecting at once time out although both ends sit idle.
//!
//! Their connection IDs are fully random. quinn's default generator draws only 24 random
//! bits per ID, and the ID it puts in a QUIC Retry is not checked against the IDs of live
//! connections. With ten thousand devices connected (several IDs each), about one Retry
//! in three hundred reused a live ID: the device's next Initial was routed to that other
//! connection and dropped, so its handshake went unanswered until it gave up.

use std::net::{SocketAddr, UdpSocket};

/// What a relay or load generator asks the kernel for, each way (Linux caps it at
/// `net.core.rmem_max` / `wmem_max`).
pub const MANY_CONNECTIONS_BUFFER: usize = 8 << 20;

/// A UDP socket bound to `addr` with `buffer` bytes asked for in each direction. Returns
/// the socket and the receive buffer the kernel granted.
pub fn bind_with_buffers(addr: SocketAddr, buffer: usize) -> std::io::Result<(UdpSocket, usize)> {
    let socket = UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // The kernel may grant less than asked; what it grants is reported, not an error.
    let _ = state.set_recv_buffer_size((&socket).into(), buffer);
    let _ = state.set_send_buffer_size((&socket).into(), buffer);
    let granted = state.recv_buffer_size((&socket).into())?;
    Ok((socket, granted))
}

/// Connection IDs of [`CONNECTION_ID_BYTES`] random bytes each.
pub fn connection_id_generator() -> Box<dyn quinn::ConnectionIdGenerator> {
    Box::new(quinn_proto::RandomConnectionIdGenerator::new(
        CONNECTION_ID_BYTES,
    ))
}

/// 64 random bits: a fresh ID matches one of a million live ones about once in 10^13.
pub const CONNECTION_ID_BYTES: usize = 8;

/// A QUIC endpoint on a socket from [`bind_with_buffers`]: a server when `server` is
/// given, else a client endpoint for many outgoing connections.
pub fn endpoint_for_many(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let (socket, granted) = bind_with_buffers(addr, MANY_CONNECTIONS_BUFFER)?;
    if granted < MANY_CONNECTIONS_BUFFER / 2 {
        tracing::warn!(
            granted,
            wanted = MANY_CONNECTIONS_BUFFER,
            "the kernel granted a small UDP receive buffer (raise net.core.rmem_max): bursts of connections may time out"
        );
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime to drive the QUIC endpoint"))?;
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(connection_id_generator);
    quinn::Endpoint::new(config, server, socket, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_do_not_repeat_among_many() {
        let mut generator = connection_id_generator();
        let count = 200_000;
        let ids: std::collections::HashSet<Vec<u8>> = (0..count)
            .map(|_| generator.generate_cid().to_vec())
            .collect();
        // A 24-bit nonce would repeat about a thousand times among these.
        assert_eq!(ids.len(), count);
    }

    #[test]
    fn a_socket_gets_more_than_the_default_buffer() {
        let (_socket, granted) =
            bind_with_buffers("127.0.0.1:0".parse().unwrap(), MANY_CONNECTIONS_BUFFER).unwrap();
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = quinn::udp::UdpSocketState::new((&plain).into())
            .unwrap()
            .recv_buffer_size((&plain).into())
            .unwrap();
        assert!(granted > default, "granted {granted}, default {default}");
    }
}
