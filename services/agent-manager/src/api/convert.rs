//! Translation between the wire types and the domain model, with the input
//! validation that names the offending field.

use std::collections::BTreeMap;
use std::time::Duration;

use shepherd_proto::agentmanager::v1 as pb;

use crate::containment::{ResourceLimits, Usage};
use crate::error::{Error, Result};
use crate::events::wire_exit_reason;
use crate::model::approval::{ApprovalState, Decision};
use crate::model::task::TaskState;
use crate::model::{
    self, AgentRecord, AgentSpec, AgentStatus, DesiredState, NewAgent, RestartMode, RestartPolicy,
    Runtime,
};

/// Longest image reference (and Kubernetes command) accepted.
const MAX_IMAGE_LEN: usize = 4096;

pub(super) fn new_agent(agent: Option<pb::Agent>) -> Result<NewAgent> {
    let agent = agent.ok_or_else(|| Error::invalid("agent", "is required"))?;
    model::validate_name("agent.name", &agent.name)?;
    let runtime = runtime(agent.runtime)?;
    if runtime == Runtime::External {
        let launch_fields = !agent.command.is_empty()
            || !agent.args.is_empty()
            || !agent.env.is_empty()
            || !agent.working_dir.is_empty()
            || !agent.run_as_user.is_empty();
        if launch_fields {
            return Err(Error::invalid(
                "agent.command",
                "an external agent is launched by something else: leave command, args, env, working_dir and run_as_user empty",
            ));
        }
    } else if runtime == Runtime::Kubernetes {
        // The command runs in the image, not on this host: only its shape
        // is checked (empty keeps the image's entrypoint).
        shepherd_platform::validate::text("agent.command", &agent.command, MAX_IMAGE_LEN)?;
        if agent.image.trim().is_empty() {
            return Err(Error::invalid(
                "agent.image",
                "a KUBERNETES agent needs its container image, e.g. ghcr.io/you/agent:1.0",
            ));
        }
    } else {
        model::validate_command(&agent.command)?;
    }
    if runtime != Runtime::Kubernetes && !agent.image.is_empty() {
        return Err(Error::invalid(
            "agent.image",
            "only a KUBERNETES agent runs an image; leave it empty or set runtime: KUBERNETES",
        ));
    }
    shepherd_platform::validate::text("agent.image", &agent.image, MAX_IMAGE_LEN)?;
    model::validate_args(&agent.args)?;
    let env: BTreeMap<String, String> = agent.env.into_iter().collect();
    model::validate_env(&env)?;
    let labels: BTreeMap<String, String> = agent.labels.into_iter().collect();
    model::validate_labels(&labels)?;
    let working_dir = Some(agent.working_dir).filter(|dir| !dir.is_empty());
    if let Some(dir) = &working_dir {
        model::validate_working_dir(dir)?;
    }
    let run_as_user = Some(agent.run_as_user).filter(|user| !user.is_empty());
    if let Some(user) = &run_as_user {
        if runtime == Runtime::Kubernetes {
            return Err(Error::invalid(
                "agent.run_as_user",
                "a KUBERNETES agent runs as its image says; leave it empty",
            ));
        }
        model::validate_user(user)?;
    }
    let restart_policy = restart_policy(agent.restart_policy)?;
    model::validate_policy(&restart_policy)?;
    let limits = agent
        .limits
        .map_or(Ok(ResourceLimits::default()), |limits| {
            ResourceLimits::validated(
                Some(limits.memory_bytes),
                Some(limits.cpu_cores),
                Some(limits.max_processes),
            )
        })?;
    let desired_state = match pb::DesiredState::try_from(agent.desired_state) {
        Ok(pb::DesiredState::Unspecified | pb::DesiredState::Running) => DesiredState::Running,
        Ok(pb::DesiredState::Stopped) => DesiredState::Stopped,
        Err(_) => {
            return Err(Error::invalid(
                "agent.desired_state",
                format!(
                    "{} is not a known state; use RUNNING or STOPPED",
                    agent.desired_state
                ),
            ));
        }
    };
    Ok(NewAgent {
        name: agent.name,
        spec: AgentSpec {
            command: agent.command,
            args: agent.args,
            env,
            working_dir,
            restart_policy,
            limits,
            runtime,
            image: Some(agent.image).filter(|image| !image.is_empty()),
            run_as_user,
        },
        labels,
        desired_state,
    })
}

fn runtime(value: i32) -> Result<Runtime> {
    match pb::Runtime::try_from(value) {
        Ok(pb::Runtime::Unspecified | pb::Runtime::Process) => Ok(Runtime::Process),
        Ok(pb::Runtime::External) => Ok(Runtime::External),
        Ok(pb::Runtime::Kubernetes) => Ok(Runtime::Kubernetes),
        Err(_) => Err(Error::invalid(
            "agent.runtime",
            format!("{value} is not a known runtime; use PROCESS, EXTERNAL or KUBERNETES"),
        )),
    }
}

fn restart_policy(policy: Option<pb::RestartPolicy>) -> Result<RestartPolicy> {
    let defaults = RestartPolicy::default();
    let Some(policy) = policy else {
        return Ok(defaults);
    };
    let mode = match pb::RestartMode::try_from(policy.mode) {
        Ok(pb::RestartMode::Unspecified | pb::RestartMode::OnFailure) => RestartMode::OnFailure,
        Ok(pb::RestartMode::Never) => RestartMode::Never,
        Ok(pb::RestartMode::Always) => RestartMode::Always,
        Err(_) => {
            return Err(Error::invalid(
                "agent.restart_policy.mode",
                format!(
                    "{} is not a known mode; use NEVER, ON_FAILURE or ALWAYS",
                    policy.mode
                ),
            ));
        }
    };
    Ok(RestartPolicy {
        mode,
        max_restarts: if policy.max_restarts == 0 {
            defaults.max_restarts
        } else {
            policy.max_restarts
        },
        window: duration(
            "agent.restart_policy.window",
            policy.window,
            defaults.window,
        )?,
        initial_backoff: duration(
            "agent.restart_policy.initial_backoff",
            policy.initial_backoff,
            defaults.initial_backoff,
        )?,
        max_backoff: duration(
            "agent.restart_policy.max_backoff",
            policy.max_backoff,
            defaults.max_backoff,
        )?,
    })
}

/// An optional proto duration; absent means the default, negative is an error.
fn duration(
    field: &str,
    value: Option<prost_types::Duration>,
    default: Duration,
) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(value) => shepherd_platform::validate::non_negative_duration(value)
            .ok_or_else(|| Error::invalid(field, "must be a non-negative duration")),
    }
}

/// An agent on the wire, with what its tree uses now (if it runs).
pub(super) fn agent(record: AgentRecord, usage: Option<Usage>) -> pb::Agent {
    let policy = &record.spec.restart_policy;
    let limits = &record.spec.limits;
    pb::Agent {
        runtime: match record.spec.runtime {
            Runtime::Process => pb::Runtime::Process,
            Runtime::External => pb::Runtime::External,
            Runtime::Kubernetes => pb::Runtime::Kubernetes,
        } as i32,
        image: record.spec.image.clone().unwrap_or_default(),
        // Set by the API only in the response that made it.
        credential: String::new(),
        limits: Some(self::limits(limits)),
        usage: usage.map(|usage| pb::ResourceUsage {
            memory_bytes: usage.memory_bytes,
            cpu_time: usage
                .cpu_time
                .and_then(|time| prost_types::Duration::try_from(time).ok()),
            cpu_cores: usage.cpu_cores,
            processes: usage.processes,
        }),
        exit_reason: wire_exit_reason(record.exit_reason) as i32,
        id: record.id.to_string(),
        name: record.name,
        command: record.spec.command,
        args: record.spec.args,
        env: record.spec.env.into_iter().collect(),
        working_dir: record.spec.working_dir.unwrap_or_default(),
        run_as_user: record.spec.run_as_user.clone().unwrap_or_default(),
        labels: record.labels.into_iter().collect(),
        restart_policy: Some(pb::RestartPolicy {
            mode: match policy.mode {
                RestartMode::Never => pb::RestartMode::Never,
                RestartMode::OnFailure => pb::RestartMode::OnFailure,
                RestartMode::Always => pb::RestartMode::Always,
            } as i32,
            max_restarts: policy.max_restarts,
            window: prost_types::Duration::try_from(policy.window).ok(),
            initial_backoff: prost_types::Duration::try_from(policy.initial_backoff).ok(),
            max_backoff: prost_types::Duration::try_from(policy.max_backoff).ok(),
        }),
        desired_state: match record.desired_state {
            DesiredState::Running => pb::DesiredState::Running,
            DesiredState::Stopped => pb::DesiredState::Stopped,
        } as i32,
        status: status(record.status) as i32,
        status_message: record.status_message,
        generation: record.generation,
        pid: record.pid.unwrap_or(0),
        restart_count: u32::try_from(record.generation.saturating_sub(1)).unwrap_or(u32::MAX),
        create_time: Some(record.created_at.into()),
        update_time: Some(record.updated_at.into()),
        node: record.node.unwrap_or_default(),
    }
}

/// A manager node on the wire.
pub(super) fn node(node: crate::store::NodeRecord) -> pb::ManagerNode {
    pb::ManagerNode {
        name: node.name,
        url: node.url,
        term: u64::try_from(node.term).unwrap_or(0),
        live: node.live,
        lease_expires: Some(node.lease_expires.into()),
    }
}

pub(super) fn limits(limits: &ResourceLimits) -> pb::ResourceLimits {
    pb::ResourceLimits {
        memory_bytes: limits.memory_bytes.unwrap_or(0),
        cpu_cores: limits
            .cpu_millicores
            .map_or(0.0, |millis| f64::from(millis) / 1000.0),
        max_processes: limits.max_processes.unwrap_or(0),
    }
}

pub(super) fn status(status: AgentStatus) -> pb::AgentStatus {
    match status {
        AgentStatus::Pending => pb::AgentStatus::Pending,
        AgentStatus::Starting => pb::AgentStatus::Starting,
        AgentStatus::Ready => pb::AgentStatus::Ready,
        AgentStatus::Exited => pb::AgentStatus::Exited,
        AgentStatus::Failed => pb::AgentStatus::Failed,
        AgentStatus::Stopped => pb::AgentStatus::Stopped,
        AgentStatus::Lost => pb::AgentStatus::Lost,
    }
}

pub(super) fn status_filter(value: i32) -> Result<Option<AgentStatus>> {
    let status = pb::AgentStatus::try_from(value)
        .map_err(|_| Error::invalid("status", format!("{value} is not a known agent status")))?;
    Ok(AgentStatus::ALL
        .into_iter()
        .find(|candidate| self::status(*candidate) == status))
}

/// ListApprovals' state filter (UNSPECIFIED: all).
pub(super) fn approval_state_filter(value: i32) -> Result<Option<ApprovalState>> {
    let state = pb::ApprovalState::try_from(value)
        .map_err(|_| Error::invalid("state", format!("{value} is not a known approval state")))?;
    Ok(match state {
        pb::ApprovalState::Unspecified => None,
        pb::ApprovalState::Pending => Some(ApprovalState::Pending),
        pb::ApprovalState::Approved => Some(ApprovalState::Approved),
        pb::ApprovalState::Denied => Some(ApprovalState::Denied),
        pb::ApprovalState::Expired => Some(ApprovalState::Expired),
        pb::ApprovalState::Withdrawn => Some(ApprovalState::Withdrawn),
    })
}

pub(super) fn decision(value: i32) -> Result<Decision> {
    match pb::Decision::try_from(value) {
        Ok(pb::Decision::Approve) => Ok(Decision::Approve),
        Ok(pb::Decision::Deny) => Ok(Decision::Deny),
        _ => Err(Error::invalid(
            "decision",
            "must be DECISION_APPROVE or DECISION_DENY",
        )),
    }
}

/// A task's state on the wire; None: never delivered (UNKNOWN).
pub(super) fn task_state(state: Option<TaskState>) -> pb::TaskState {
    match state {
        Some(TaskState::Delivered) => pb::TaskState::Delivered,
        Some(TaskState::Accepted) => pb::TaskState::Accepted,
        Some(TaskState::Completed) => pb::TaskState::Completed,
        Some(TaskState::Lost) => pb::TaskState::Lost,
        None => pb::TaskState::Unknown,
    }
}

/// A task's status as another node answered it.
pub(super) fn task_status_from_wire(task: pb::TaskStatus) -> crate::manager::TaskStatus {
    use crate::model::task::TaskOutcome;
    crate::manager::TaskStatus {
        state: match pb::TaskState::try_from(task.state) {
            Ok(pb::TaskState::Delivered) => Some(TaskState::Delivered),
            Ok(pb::TaskState::Accepted) => Some(TaskState::Accepted),
            Ok(pb::TaskState::Completed) => Some(TaskState::Completed),
            Ok(pb::TaskState::Lost) => Some(TaskState::Lost),
            _ => None,
        },
        outcome: match pb::TaskOutcome::try_from(task.outcome) {
            Ok(pb::TaskOutcome::Succeeded) => Some(TaskOutcome::Succeeded),
            Ok(pb::TaskOutcome::Failed) => Some(TaskOutcome::Failed),
            Ok(pb::TaskOutcome::TimedOut) => Some(TaskOutcome::TimedOut),
            Ok(pb::TaskOutcome::Cancelled) => Some(TaskOutcome::Cancelled),
            _ => None,
        },
        task_id: task.task_id,
        attempt: task.attempt,
        output: task.output,
    }
}

/// A completed task's stored outcome on the wire.
pub(super) fn task_outcome(outcome: Option<crate::model::task::TaskOutcome>) -> pb::TaskOutcome {
    outcome.map_or(pb::TaskOutcome::Unspecified, crate::events::wire_outcome)
}

/// A spent budget's grace for its running tasks: 0 to an hour.
pub(super) fn budget_grace(grace: Option<prost_types::Duration>) -> Result<Duration, Error> {
    let max = crate::approvals::MAX_BUDGET_GRACE;
    grace
        .map_or(
            Some(Duration::ZERO),
            shepherd_platform::validate::non_negative_duration,
        )
        .filter(|grace| *grace <= max)
        .ok_or_else(|| Error::invalid("grace", "must be 0 to 1 hour"))
}
