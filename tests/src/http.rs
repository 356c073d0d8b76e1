//! A minimal HTTP/1.1 client for tests of the HTTP surfaces (webhooks, the
//! console): one request per connection, status, headers and body back.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP answer.
pub struct HttpAnswer {
    pub status: u16,
    /// Header lines as sent (`name: value`), names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The body as JSON (Null if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.body.trim()).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `method url` with `headers` and a JSON `body` (if any).
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> anyhow::Result<HttpAnswer> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("not an http URL: {url}"))?;
    let (host, _) = rest.split_once('/').unwrap_or((rest, ""));
    let stream = tokio::net::TcpStream::connect(host).await?;
    exchange(stream, method, rest, headers, body).await
}

/// Like `request`, for an `https://` URL of a server whose certificate the
/// PEM CA in `ca` signed (for `localhost`).
pub async fn request_tls(
    method: &str,
    url: &str,
    ca: &std::path::Path,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> anyhow::Result<HttpAnswer> {
    use rustls_pki_types::pem::PemObject;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("not an https URL: {url}"))?;
    let (host, _) = rest.split_once('/').unwrap_or((rest, ""));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(host).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let stream = connector.connect(name, tcp).await?;
    exchange(stream, method, rest, headers, body).await
}

/// One request and its answer on `stream` (`rest`: the URL without its
/// scheme).
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    rest: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> anyhow::Result<HttpAnswer> {
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    // A test may name another Host (a rebinding page's).
    let named = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"));
    let mut request = format!("{method} /{path} HTTP/1.1\r\nConnection: close\r\n");
    if !named {
        request += &format!("Host: {host}\r\n");
    }
    if let Some(body) = body {
        request += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).await?;
    if let Some(body) = body {
        // A server refusing an oversized body may close before reading it all.
        let _ = stream.write_all(body).await;
    }
    let mut answer = Vec::new();
    // A TLS peer that closes without close_notify is still an answer.
    if let Err(err) = stream.read_to_end(&mut answer).await
        && answer.is_empty()
    {
        return Err(err.into());
    }
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    })
}
