//! HTTPS in front of a local plain-HTTP fake: terminates TLS with a test certificate and
//! copies bytes to the backend, so clients that insist on https can be pointed at fakes.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::pki::Issued;

/// A running TLS front; stops when dropped.
pub struct HttpsFront {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsFront {
    /// Starts a front for `backend`, presenting `identity`.
    pub async fn start(backend: SocketAddr, identity: &Issued) -> Self {
        let tls_identity =
            native_tls::Identity::from_pkcs8(&identity.cert_pem(), &identity.key_pem())
                .expect("identity");
        let acceptor = tokio_native_tls::TlsAcceptor::from(
            native_tls::TlsAcceptor::new(tls_identity).expect("acceptor"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        Self { addr, task }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS acceptor presenting `identity` (for fakes that serve https themselves).
pub fn acceptor(identity: &Issued) -> tokio_native_tls::TlsAcceptor {
    let tls_identity = native_tls::Identity::from_pkcs8(&identity.cert_pem(), &identity.key_pem())
        .expect("identity");
    tokio_native_tls::TlsAcceptor::from(
        native_tls::TlsAcceptor::new(tls_identity).expect("acceptor"),
    )
}
