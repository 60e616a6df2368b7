//! Test support for referral-connector: local fakes of every external system, bound to
//! 127.0.0.1 and addressed through the same base-URL settings a user sets, and a test PKI
//! generated at run time (no private key is ever committed).

pub mod azurite;
pub mod cert_host;
pub mod cert_world;
pub mod fakes;
pub mod host;
pub mod host_emulation;
pub mod pki;
pub mod standins;
pub mod sync_world;
pub mod tls;

/// A port on 127.0.0.1 that was free a moment ago (for processes that bind it themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
