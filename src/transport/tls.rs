//! TLS (`security: "tls"`) with rustls on aws-lc-rs, behaving as V2Ray 4.34's Go `crypto/tls` setup:
//! per-side ALPN defaults, Go's server-side ALPN rule (chosen per ClientHello), SNI from the
//! destination, the OS trust store plus every listed certificate, no resumption unless asked.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{Acceptor, ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};
use tracing::warn;

use super::settings::{CertUsage, TlsSettings};
use crate::session::Address;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// Parses a PEM chain and key into a served certificate, checking that they belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block in the certificate PEM".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key PEM: {e}"))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| format!("certificate and key: {e}"))
}

/// Which ALPN protocol a server selects, by Go 1.19's rule (TRANSPORTS.md §2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlpnChoice {
    /// No ALPN in the ServerHello; the handshake goes on.
    None,
    /// This protocol.
    Protocol(Vec<u8>),
    /// Fatal alert no_application_protocol.
    Reject,
}

/// Go's server rule: no client ALPN → none; else the first of the server's protocols the client
/// offers; else none if the server lists `h2` and the client offers `http/1.1`; else reject.
/// `server` is the list before oxray drops `h2` on WebSocket listeners (`never_h2`).
pub fn select_alpn(server: &[Vec<u8>], client: Option<&[Vec<u8>]>, never_h2: bool) -> AlpnChoice {
    let Some(client) = client.filter(|c| !c.is_empty()) else { return AlpnChoice::None };
    let usable = server.iter().filter(|p| !(never_h2 && p.as_slice() == b"h2"));
    if let Some(p) = usable.into_iter().find(|p| client.contains(p)) {
        return AlpnChoice::Protocol(p.clone());
    }
    let lists_h2 = server.iter().any(|p| p.as_slice() == b"h2");
    if lists_h2 && client.iter().any(|p| p.as_slice() == b"http/1.1") {
        return AlpnChoice::None;
    }
    AlpnChoice::Reject
}

/// Served certificates: one → always it; several → the first valid for the SNI, else the first.
#[derive(Debug)]
struct Certs(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.0.len() > 1
            && let Some(sni) = hello.server_name()
            && let Ok(name) = ServerName::try_from(sni)
        {
            for ck in &self.0 {
                let Some(leaf) = ck.end_entity_cert().ok() else { continue };
                if let Ok(ee) = webpki::EndEntityCert::try_from(leaf)
                    && ee.verify_is_valid_for_subject_name(&name).is_ok()
                {
                    return Some(ck.clone());
                }
            }
        }
        self.0.first().cloned()
    }
}

/// The server side of a TLS listener: one rustls config per possible ALPN outcome.
pub struct TlsServer {
    server_alpn: Vec<Vec<u8>>,
    never_h2: bool,
    none: Arc<ServerConfig>,
    by_protocol: Vec<(Vec<u8>, Arc<ServerConfig>)>,
    reject: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").field("alpn", &self.server_alpn).finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Builds the server for `s`; `websocket` picks 4.34's WS defaults and never selects `h2`.
    pub fn new(s: &TlsSettings, websocket: bool) -> io::Result<TlsServer> {
        let mut certs = Vec::new();
        for c in s.certificates.iter().filter(|c| c.usage == CertUsage::Encipherment) {
            let Some(key) = &c.key else { continue };
            match certified_key(&c.certificate, key) {
                Ok(ck) => certs.push(Arc::new(ck)),
                Err(e) => warn!("tlsSettings: ignoring invalid X509 key pair: {e}"),
            }
        }
        if certs.is_empty() {
            return Err(invalid("tlsSettings: no usable server certificate (every handshake would fail)"));
        }
        let resolver = Arc::new(Certs(certs));
        let server_alpn: Vec<Vec<u8>> = if s.alpn.is_empty() {
            if websocket { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"h2".to_vec()] }
        } else {
            s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
        };
        let build = |alpn: Vec<Vec<u8>>| -> io::Result<Arc<ServerConfig>> {
            let mut cfg = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            cfg.alpn_protocols = alpn;
            if s.session_resumption {
                cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| invalid(e.to_string()))?;
            } else {
                // As 4.34 without enableSessionResumption: no tickets, nothing resumes.
                cfg.session_storage = Arc::new(NoServerSessionStorage {});
                cfg.send_tls13_tickets = 0;
            }
            Ok(Arc::new(cfg))
        };
        let mut by_protocol = Vec::new();
        for p in &server_alpn {
            if !by_protocol.iter().any(|(q, _)| q == p) {
                by_protocol.push((p.clone(), build(vec![p.clone()])?));
            }
        }
        Ok(TlsServer {
            none: build(Vec::new())?,
            // No overlap with this list makes rustls send alert 120, as Go does.
            reject: build(server_alpn.clone())?,
            by_protocol,
            server_alpn,
            never_h2: websocket,
        })
    }

    /// Runs the server handshake on `stream`.
    pub async fn accept<S>(&self, stream: S) -> io::Result<tokio_rustls::server::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        let offered: Option<Vec<Vec<u8>>> = start.client_hello().alpn().map(|it| it.map(|p| p.to_vec()).collect());
        let cfg = match select_alpn(&self.server_alpn, offered.as_deref(), self.never_h2) {
            AlpnChoice::None => self.none.clone(),
            AlpnChoice::Protocol(p) => {
                self.by_protocol.iter().find(|(q, _)| *q == p).map_or_else(|| self.none.clone(), |(_, c)| c.clone())
            }
            AlpnChoice::Reject => self.reject.clone(),
        };
        start.into_stream(cfg).await
    }
}

/// A verifier whose verdict on the certificate is fixed: `allowInsecure` accepts any certificate;
/// `disableSystemRoot` with no certificate listed trusts nothing. Handshake signatures are still checked.
#[derive(Debug)]
struct FixedVerdict {
    algs: WebPkiSupportedAlgorithms,
    accept: bool,
}

impl ServerCertVerifier for FixedVerdict {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.accept {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("no trusted root: disableSystemRoot is set and no certificate is listed".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The client side of an outbound's TLS.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Builds the client for `s`; `websocket` picks 4.34's WS default ALPN (`http/1.1` only).
    pub fn new(s: &TlsSettings, websocket: bool) -> TlsClient {
        let provider = provider();
        let algs = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = if s.allow_insecure {
            Arc::new(FixedVerdict { algs, accept: true })
        } else {
            let mut roots = RootCertStore::empty();
            if !s.disable_system_root {
                let native = rustls_native_certs::load_native_certs();
                for e in &native.errors {
                    warn!("tlsSettings: reading the system trust store: {e}");
                }
                let (added, _ignored) = roots.add_parsable_certificates(native.certs);
                tracing::debug!("{added} system root certificates");
            }
            // Every listed certificate is a trust anchor, whatever its usage (as 4.34's getCertPool).
            for c in &s.certificates {
                let ders = CertificateDer::pem_slice_iter(&c.certificate).filter_map(Result::ok);
                roots.add_parsable_certificates(ders);
            }
            if roots.is_empty() {
                Arc::new(FixedVerdict { algs, accept: false })
            } else {
                match rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                {
                    Ok(v) => v,
                    Err(e) => {
                        warn!("tlsSettings: cannot build the certificate verifier: {e}");
                        Arc::new(FixedVerdict { algs, accept: false })
                    }
                }
            }
        };
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        cfg.alpn_protocols = if s.alpn.is_empty() {
            if websocket { vec![b"http/1.1".to_vec()] } else { vec![b"h2".to_vec(), b"http/1.1".to_vec()] }
        } else {
            s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
        };
        if !s.session_resumption {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        TlsClient { connector: TlsConnector::from(Arc::new(cfg)), server_name: s.server_name.clone() }
    }

    /// The name sent as SNI and verified: `serverName`, else the destination (an IP sends no SNI and
    /// is checked against the certificate's IP SANs).
    pub fn name_for(&self, dest: &Address) -> io::Result<ServerName<'static>> {
        let text = match &self.server_name {
            Some(n) => n.clone(),
            None => match dest {
                Address::Domain(d) => d.to_string(),
                Address::Ip(ip) => return Ok(ServerName::IpAddress((*ip).into())),
            },
        };
        ServerName::try_from(text.clone())
            .map_err(|_| invalid(format!("tlsSettings.serverName {text:?} is not a valid name")))
    }

    /// Runs the client handshake on `stream` for destination `dest`.
    pub async fn connect<S>(&self, stream: S, dest: &Address) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self.name_for(dest)?;
        self.connector.connect(name, stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn go_alpn_rule() {
        let p = |s: &str| AlpnChoice::Protocol(s.as_bytes().to_vec());
        // TCP server default [h2].
        let tcp = l(&["h2"]);
        assert_eq!(select_alpn(&tcp, None, false), AlpnChoice::None);
        assert_eq!(select_alpn(&tcp, Some(&l(&["h2", "http/1.1"])), false), p("h2"));
        assert_eq!(select_alpn(&tcp, Some(&l(&["http/1.1"])), false), AlpnChoice::None, "Go's http/1.1 fallback");
        assert_eq!(select_alpn(&tcp, Some(&l(&["foo"])), false), AlpnChoice::Reject);
        // WS server default [h2, http/1.1]: server preference order, but oxray never picks h2 there.
        let ws = l(&["h2", "http/1.1"]);
        assert_eq!(select_alpn(&ws, Some(&l(&["h2", "http/1.1"])), false), p("h2"));
        assert_eq!(select_alpn(&ws, Some(&l(&["h2", "http/1.1"])), true), p("http/1.1"));
        assert_eq!(select_alpn(&ws, Some(&l(&["http/1.1"])), true), p("http/1.1"));
        assert_eq!(select_alpn(&ws, Some(&l(&["h2"])), true), AlpnChoice::Reject);
        assert_eq!(select_alpn(&l(&["http/1.1"]), Some(&l(&["h2"])), false), AlpnChoice::Reject);
        assert_eq!(select_alpn(&l(&["a", "b"]), Some(&l(&["b", "a"])), false), p("a"));
    }
}
