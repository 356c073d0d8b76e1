//! Which names the console answers to, and which pages may act through it.
//!
//! A page on another site can make a browser send requests to the console:
//! by rebinding its own name to 127.0.0.1 (DNS rebinding, the request then
//! carries that foreign name as its Host), or by posting to it (the
//! request carries the page's Origin). So every request must name the
//! console by a host it answers to (loopback, or a configured public
//! origin's), and every state-changing one that carries an Origin must
//! come from one of those origins.

/// The origins the console is reached at besides loopback
/// (`CONSOLE_PUBLIC_ORIGINS`), e.g. `https://console.example.com`.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    public: Vec<Origin>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    /// Lower-case host, with its port when it names one.
    authority: String,
}

impl Origins {
    /// From `scheme://host[:port]` entries; anything else is refused.
    pub fn new(public: &[String]) -> Result<Self, String> {
        let public = public
            .iter()
            .map(|text| {
                parse(text).ok_or_else(|| {
                    format!(
                        "CONSOLE_PUBLIC_ORIGINS: {} is not an origin (scheme://host[:port])",
                        shepherd_platform::validate::quote(text)
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { public })
    }

    /// Whether a public origin is https: the console is then reached over
    /// TLS (through a proxy), and its cookie is `Secure`.
    pub fn secure(&self) -> bool {
        self.public.iter().any(|origin| origin.scheme == "https")
    }

    /// Whether the Host header names the console.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        loopback(&host) || self.public.iter().any(|origin| origin.authority == host)
    }

    /// Whether a request's Origin header is the console's own.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        match parse(origin) {
            Some(origin) => {
                (matches!(origin.scheme.as_str(), "http" | "https") && loopback(&origin.authority))
                    || self.public.contains(&origin)
            }
            None => false,
        }
    }
}

fn parse(text: &str) -> Option<Origin> {
    let (scheme, authority) = text.trim().split_once("://")?;
    let authority = authority.trim_end_matches('/');
    let valid = !authority.is_empty()
        && !authority.contains(['/', '@', '?', '#', ' '])
        && matches!(scheme, "http" | "https");
    valid.then(|| Origin {
        scheme: scheme.to_owned(),
        authority: authority.to_ascii_lowercase(),
    })
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
fn loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    host
                } else {
                    authority
                }
            }),
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_configured_names_only() {
        let origins = Origins::new(&["https://Console.Example.com".to_owned()]).unwrap();
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "localhost",
            "[::1]:8080",
            "127.1.2.3",
            "console.example.com",
        ] {
            assert!(origins.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "",
            "0.0.0.0:8080",
        ] {
            assert!(!origins.host_allowed(host), "{host}");
        }
        assert!(origins.origin_allowed("http://127.0.0.1:8080"));
        assert!(origins.origin_allowed("https://console.example.com"));
        assert!(
            !origins.origin_allowed("http://console.example.com"),
            "scheme counts"
        );
        assert!(!origins.origin_allowed("http://evil.example"));
        assert!(!origins.origin_allowed("null"));
        assert!(origins.secure());
        assert!(!Origins::default().secure());
        assert!(Origins::new(&["console.example.com".to_owned()]).is_err());
        assert!(Origins::new(&["https://a/b".to_owned()]).is_err());
    }
}
