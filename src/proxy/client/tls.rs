//! The TLS setup for `https` upstreams: rustls with the ring provider, the public web
//! roots (webpki-roots, so the gateway trusts the same CAs wherever it runs, whatever the
//! host's certificate store holds), and ALPN `http/1.1`, the only protocol the client speaks.

use std::sync::Arc;

use rustls::{pki_types::CertificateDer, ClientConfig, RootCertStore};

/// The client side of every upstream TLS connection. `extra_roots` are trusted besides
/// the public roots (a private CA, or a test's self-signed certificate).
pub(super) fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for root in extra_roots {
        roots.add(root.clone())?;
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
