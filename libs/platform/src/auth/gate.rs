//! The gate in front of a gRPC service: authenticates the caller
//! (UNAUTHENTICATED without a known credential), then checks the RPC
//! against the caller's role (PERMISSION_DENIED naming the roles that may
//! call it). Only then does the call reach the service, with its
//! [`Caller`] as a request extension. With no credentials configured the
//! API is open (the services allow that on loopback only) and every caller
//! is an anonymous admin.
//!
//! A tower layer rather than a tonic interceptor: an interceptor does not
//! see which method is called.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::server::NamedService;

use super::credentials::{Caller, Credentials};
use super::roles::{Permission, Role};

/// Which permission each RPC of a service needs (by method name); None:
/// not a method of this service (refused: fail closed).
pub type PermissionTable = fn(&str) -> Option<Permission>;

#[derive(Clone)]
pub struct RoleGate<S> {
    inner: S,
    credentials: Arc<Credentials>,
    permission: PermissionTable,
}

impl<S> RoleGate<S> {
    pub fn new(inner: S, credentials: Arc<Credentials>, permission: PermissionTable) -> Self {
        Self {
            inner,
            credentials,
            permission,
        }
    }

    /// Who calls, and whether they may call `method`.
    fn admit(&self, headers: &http::HeaderMap, method: &str) -> Result<Caller, Status> {
        let caller = if self.credentials.is_empty() {
            Caller {
                name: "anonymous".to_owned(),
                role: Role::Admin,
                agent: None,
            }
        } else {
            let presented = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "missing credentials: send the header `authorization: Bearer <token>`",
                    )
                })?;
            self.credentials
                .identify(presented)
                .ok_or_else(|| Status::unauthenticated("invalid bearer token"))?
        };
        let Some(permission) = (self.permission)(method) else {
            return Err(Status::unimplemented("no such method"));
        };
        if !caller.role.allows(permission) {
            return Err(Status::permission_denied(format!(
                "{method} needs the role {}; {} has the role {}",
                permission.roles(),
                caller.name,
                caller.role
            )));
        }
        Ok(caller)
    }
}

impl<S: NamedService> NamedService for RoleGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for RoleGate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        futures_util::future::Ready<Result<S::Response, S::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // "/package.Service/Method"
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        match self.admit(request.headers(), &method) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures_util::future::Either::Right(self.inner.call(request))
            }
            Err(status) => futures_util::future::Either::Left(futures_util::future::ready(Ok(
                status.into_http(),
            ))),
        }
    }
}

/// Who made `request`: its credential's name, or `anonymous` and its
/// address when the API is open.
pub fn caller<T>(request: &tonic::Request<T>) -> String {
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.name != "anonymous" => caller.name.clone(),
        _ => match request.remote_addr() {
            Some(addr) => format!("anonymous ({})", addr.ip()),
            None => "anonymous".to_owned(),
        },
    }
}

/// The caller's identity as the gate admitted it (None: not through a
/// gate, as in unit tests).
pub fn identity<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Caller>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    fn table(method: &str) -> Option<Permission> {
        match method {
            "Get" => Some(Permission::Read),
            "Delete" => Some(Permission::Operate),
            "Decide" => Some(Permission::Approve),
            _ => None,
        }
    }

    #[derive(Clone)]
    struct Echo;
    impl tower::Service<http::Request<()>> for Echo {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = futures_util::future::Ready<Result<Self::Response, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let who = request.extensions().get::<Caller>().map(|c| c.name.clone());
            let mut response = http::Response::new(tonic::body::Body::empty());
            response
                .headers_mut()
                .insert("x-caller", who.unwrap_or_default().parse().unwrap());
            futures_util::future::ready(Ok(response))
        }
    }

    async fn call(
        gate: &mut RoleGate<Echo>,
        method: &str,
        token: Option<&str>,
    ) -> (String, String) {
        let mut request = http::Request::new(());
        *request.uri_mut() = format!("/pkg.Svc/{method}").parse().unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let response = gate.ready().await.unwrap().call(request).await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (header("grpc-status"), header("x-caller"))
    }

    #[tokio::test]
    async fn a_call_outside_the_role_never_reaches_the_service() {
        let mut credentials = Credentials::default();
        credentials
            .add_named_tokens("vic:viewer=v,alice:approver=a")
            .unwrap();
        let mut gate = RoleGate::new(Echo, Arc::new(credentials), table);
        assert_eq!(
            call(&mut gate, "Get", Some("v")).await,
            (String::new(), "vic".into())
        );
        // 7: PERMISSION_DENIED; 16: UNAUTHENTICATED; 12: UNIMPLEMENTED.
        assert_eq!(call(&mut gate, "Delete", Some("v")).await.0, "7");
        assert_eq!(call(&mut gate, "Decide", Some("v")).await.0, "7");
        assert_eq!(call(&mut gate, "Decide", Some("a")).await.1, "alice");
        assert_eq!(call(&mut gate, "Delete", Some("a")).await.0, "7");
        assert_eq!(call(&mut gate, "Get", Some("x")).await.0, "16");
        assert_eq!(call(&mut gate, "Get", None).await.0, "16");
        assert_eq!(call(&mut gate, "Unknown", Some("a")).await.0, "12");

        let mut open = RoleGate::new(Echo, Arc::new(Credentials::default()), table);
        assert_eq!(
            call(&mut open, "Delete", None).await,
            (String::new(), "anonymous".into())
        );
    }
}
