//! QUIC transport shared by the relay and the client: TLS configuration with a pinned
//! self-signed relay certificate, length-prefixed frames on QUIC streams, and the
//! client's request/response connection.

pub mod client;
pub mod framing;
pub mod socket;
pub mod tls;

pub use client::{relay_addresses, NetError, RelayConnection};
pub use framing::{read_frame, write_frame, FrameError};
pub use socket::endpoint_for_many;
pub use tls::{fingerprint, RelayIdentity, ALPN};
