//! `probewatch.v1.Control` (`proto/probewatch/v1/control.proto`): the analyst's actions over
//! gRPC, on the API port. Each call is the HTTP route's action ([`super::act`]) with the
//! caller the interceptor found; errors map to gRPC codes as [`ApiError`]s do.

use super::auth::{Caller, Tokens};
use super::grpc::parse;
use super::{ApiError, ApiState};
use crate::config::enforce::{Action, DegradeMode};
use crate::enforce::audit::AuditEvent;
use crate::proto::v1 as pb;
use pb::control_server::{Control, ControlServer};
use tonic::{Request, Response, Status};

fn caller<T>(r: &Request<T>) -> Result<Caller, Status> {
    r.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("missing or invalid bearer token"))
}

fn for_ms(v: i64) -> Option<i64> {
    (v != 0).then_some(v)
}

fn reply(e: Result<AuditEvent, ApiError>) -> Result<Response<pb::AuditEvent>, Status> {
    Ok(Response::new(audit_event(e?)))
}

fn audit_event(e: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id,
        ts_ms: e.ts_ms,
        who: e.who,
        act: e.act.as_str().into(),
        alert_id: e.alert_id.unwrap_or_default(),
        client: e.client.unwrap_or_default(),
        kind: e.kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
        until_ms: e.until_ms.unwrap_or(0),
        why: e.why,
    }
}

/// The action a `SetClientRequest` names.
fn action(r: &pb::SetClientRequest) -> Result<Action, Status> {
    Ok(match r.action.as_str() {
        "block" => Action::Block,
        "throttle" => Action::Throttle,
        "degrade" => Action::Degrade {
            mode: parse::<DegradeMode>("mode", &r.mode)?
                .ok_or_else(|| Status::invalid_argument("degrade needs a mode"))?,
            k: (r.k != 0).then_some(r.k as usize),
            decimals: (r.decimals != 0).then_some(r.decimals),
        },
        other => {
            return Err(Status::invalid_argument(format!(
                "action {other:?}: block, throttle or degrade"
            )))
        }
    })
}

#[tonic::async_trait]
impl Control for ApiState {
    async fn ack(&self, r: Request<pb::AlertAction>) -> Result<Response<pb::AuditEvent>, Status> {
        let c = caller(&r)?;
        let r = r.into_inner();
        reply(ApiState::ack(self, &c, &r.alert_id, &r.why))
    }

    async fn mark_false_positive(
        &self,
        r: Request<pb::AlertAction>,
    ) -> Result<Response<pb::AuditEvent>, Status> {
        let c = caller(&r)?;
        let r = r.into_inner();
        reply(self.false_positive(&c, &r.alert_id, &r.why, for_ms(r.for_ms)))
    }

    async fn allow(
        &self,
        r: Request<pb::AllowRequest>,
    ) -> Result<Response<pb::AuditEvent>, Status> {
        let c = caller(&r)?;
        let r = r.into_inner();
        let kind = parse("kind", &r.kind)?;
        reply(ApiState::allow(
            self,
            &c,
            &r.pattern,
            r.exact,
            kind,
            for_ms(r.for_ms),
            &r.why,
        ))
    }

    async fn disallow(
        &self,
        r: Request<pb::DisallowRequest>,
    ) -> Result<Response<pb::AuditEvent>, Status> {
        let c = caller(&r)?;
        let r = r.into_inner();
        let kind = parse("kind", &r.kind)?;
        reply(ApiState::disallow(self, &c, &r.pattern, kind, &r.why))
    }

    async fn set_client(
        &self,
        r: Request<pb::SetClientRequest>,
    ) -> Result<Response<pb::AuditEvent>, Status> {
        let c = caller(&r)?;
        let r = r.into_inner();
        let a = action(&r)?;
        reply(ApiState::set_client(
            self,
            &c,
            &r.client,
            a,
            for_ms(r.for_ms),
            &r.why,
        ))
    }

    async fn clear_client(
        &self,
        r: Request<pb::ClearClientRequest>,
    ) -> Result<Response<pb::AuditEvent>, Status> {
        let c = caller(&r)?;
        let r = r.into_inner();
        reply(ApiState::clear_client(self, &c, &r.client, &r.why))
    }

    async fn list_audit(
        &self,
        r: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        caller(&r)?;
        let limit = match r.get_ref().limit {
            0 => 100,
            n => (n as usize).min(super::act::MAX_LIST),
        };
        Ok(Response::new(pb::ListAuditResponse {
            events: self
                .audit
                .recent(limit)
                .into_iter()
                .map(audit_event)
                .collect(),
        }))
    }
}

/// The service, behind the bearer-token interceptor, which hands each call its caller.
pub fn service(
    state: ApiState,
    tokens: Tokens,
) -> tonic::service::interceptor::InterceptedService<
    ControlServer<ApiState>,
    impl tonic::service::Interceptor + Clone,
> {
    ControlServer::with_interceptor(state, move |mut req: Request<()>| {
        let c = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| tokens.identify(t.trim().as_bytes()));
        match c {
            Some(c) => {
                req.extensions_mut().insert(c);
                Ok(req)
            }
            None => Err(Status::unauthenticated("missing or invalid bearer token")),
        }
    })
}
