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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::server::NamedService;

use super::credentials::{Caller, Credentials};
use super::roles::{Permission, Role};
use crate::audit::{AuditEntry, AuditLog, AuditTarget, code_name};

/// Which permission each RPC of a service needs (by method name); None:
/// not a method of this service (refused: fail closed).
pub type PermissionTable = fn(&str) -> Option<Permission>;

#[derive(Clone)]
pub struct RoleGate<S> {
    inner: S,
    credentials: Arc<Credentials>,
    permission: PermissionTable,
    /// Where calls that change something are recorded (None: nowhere).
    audit: Option<AuditLog>,
}

/// What the gate decided about a call.
struct Admission {
    /// Who calls (None: unknown, refused as unauthenticated).
    caller: Option<Caller>,
    permission: Option<Permission>,
    /// Why the call must not go on, if so.
    refused: Option<Status>,
}

impl<S> RoleGate<S> {
    pub fn new(inner: S, credentials: Arc<Credentials>, permission: PermissionTable) -> Self {
        Self {
            inner,
            credentials,
            permission,
            audit: None,
        }
    }

    /// Records every call that needs more than reading in `audit`.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    fn admission(&self, headers: &http::HeaderMap, method: &str) -> Admission {
        let permission = (self.permission)(method);
        match self.authenticate(headers) {
            Err(status) => Admission {
                caller: None,
                permission,
                refused: Some(status),
            },
            Ok(caller) => {
                let refused = self.authorize(&caller, method, permission).err();
                Admission {
                    caller: Some(caller),
                    permission,
                    refused,
                }
            }
        }
    }

    /// Who calls.
    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let caller = if self.credentials.is_empty() {
            Caller {
                name: ANONYMOUS.to_owned(),
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
        Ok(caller)
    }

    /// Whether `caller` may call `method`.
    fn authorize(
        &self,
        caller: &Caller,
        method: &str,
        permission: Option<Permission>,
    ) -> Result<(), Status> {
        let Some(permission) = permission else {
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
        Ok(())
    }
}

/// Whether a call is recorded in the audit log: everything but reads, and
/// but the scheduler's own dispatches (one per task batch, which the task
/// tables record): a `service` credential's, and on an open API (where
/// every caller is the anonymous admin) everyone's; a person's dispatch
/// with a credential of their own is recorded.
fn audited(caller: &Caller, permission: Option<Permission>) -> bool {
    match permission {
        None | Some(Permission::Read) => false,
        Some(Permission::Dispatch) => caller.role != Role::Service && caller.name != ANONYMOUS,
        Some(_) => true,
    }
}

/// The caller of an open API.
const ANONYMOUS: &str = "anonymous";

impl<S: NamedService> NamedService for RoleGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for RoleGate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

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
        let admission = self.admission(request.headers(), &method);
        let audit = match (&self.audit, &admission.caller) {
            (Some(log), Some(caller)) if audited(caller, admission.permission) => {
                let peer = request
                    .extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|info| info.remote_addr())
                    .map(|addr| addr.ip().to_string())
                    .unwrap_or_default();
                Some((log.clone(), caller.clone(), peer))
            }
            _ => None,
        };
        let target = AuditTarget::default();
        let answer: Self::Future = match (admission.refused, admission.caller) {
            (None, Some(caller)) => {
                request.extensions_mut().insert(caller);
                Box::pin(crate::audit::with_target(
                    target.clone(),
                    self.inner.call(request),
                ))
            }
            (refused, _) => {
                let status = refused.unwrap_or_else(|| Status::unauthenticated("no caller"));
                Box::pin(futures_util::future::ready(Ok(status.into_http())))
            }
        };
        let Some((log, caller, peer)) = audit else {
            return answer;
        };
        Box::pin(async move {
            let response = answer.await?;
            let outcome = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<i32>().ok())
                .map_or_else(
                    || "OK".to_owned(),
                    |code| code_name(tonic::Code::from(code)),
                );
            let entry = AuditEntry {
                who: caller.name,
                role: caller.role.to_string(),
                rpc: method,
                target: target.get(),
                outcome,
                peer,
            };
            // The call happened: a log that cannot be written is an
            // operator's alarm, not the caller's failure.
            if let Err(err) = log.append(&entry).await {
                tracing::error!(error = %err, rpc = %entry.rpc, who = %entry.who, "could not write an audit entry");
            }
            Ok(response)
        })
    }
}

/// Who made `request`: its credential's name, or `anonymous` and its
/// address when the API is open.
pub fn caller<T>(request: &tonic::Request<T>) -> String {
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.name != ANONYMOUS => caller.name.clone(),
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

    #[test]
    fn what_is_audited() {
        let caller = |name: &str, role| Caller {
            name: name.to_owned(),
            role,
            agent: None,
        };
        let ops = caller("ops", Role::Operator);
        assert!(!audited(&ops, Some(Permission::Read)));
        assert!(audited(&ops, Some(Permission::Operate)));
        assert!(
            audited(&ops, Some(Permission::Dispatch)),
            "a person's dispatch"
        );
        assert!(!audited(
            &caller("sched", Role::Service),
            Some(Permission::Dispatch)
        ));
        assert!(!audited(
            &caller(ANONYMOUS, Role::Admin),
            Some(Permission::Dispatch)
        ));
        assert!(audited(
            &caller(ANONYMOUS, Role::Admin),
            Some(Permission::Operate)
        ));
        assert!(!audited(&ops, None));
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
