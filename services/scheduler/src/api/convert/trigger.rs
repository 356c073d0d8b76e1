//! Triggers on the wire and in the model, with a schedule's policy.

use std::time::Duration;

use shepherd_proto::scheduler::v1::{self as pb, trigger};

use crate::error::{Error, Result};
use crate::model::{self, CatchUp, ChainOn, Overlap, SchedulePolicy, Trigger};
use crate::webhook::WebhookTrigger;

pub(super) fn trigger_from(value: Option<pb::Trigger>) -> Result<Trigger> {
    let trigger = match value.and_then(|t| t.kind) {
        None | Some(trigger::Kind::Manual(_)) => Trigger::Manual,
        Some(trigger::Kind::Interval(interval)) => Trigger::Interval {
            period_ms: millis("workflow.trigger.interval.period", interval.period)?,
            policy: policy_from("workflow.trigger.interval.policy", interval.policy)?,
        },
        Some(trigger::Kind::Cron(cron)) => Trigger::Cron {
            expression: cron.expression,
            policy: policy_from("workflow.trigger.cron.policy", cron.policy)?,
        },
        Some(trigger::Kind::Delay(delay)) => Trigger::Delay {
            delay_ms: millis("workflow.trigger.delay.delay", delay.delay)?,
        },
        Some(trigger::Kind::AgentRestart(restart)) => Trigger::AgentRestart {
            agent: match restart.agent_id.as_str() {
                "" => None,
                id => Some(model::parse_id(
                    "workflow.trigger.agent_restart.agent_id",
                    id,
                    "agent",
                )?),
            },
        },
        Some(trigger::Kind::Chain(chain)) => Trigger::Chain {
            parent: model::parse_id(
                "workflow.trigger.chain.parent_workflow_id",
                &chain.parent_workflow_id,
                "workflow",
            )?,
            on: match pb::ChainOn::try_from(chain.on) {
                Ok(pb::ChainOn::Unspecified | pb::ChainOn::Succeeded) => ChainOn::Succeeded,
                Ok(pb::ChainOn::Failed) => ChainOn::Failed,
                Ok(pb::ChainOn::Any) => ChainOn::Any,
                Err(_) => {
                    return Err(Error::invalid(
                        "workflow.trigger.chain.on",
                        format!("{} is not known; use SUCCEEDED, FAILED or ANY", chain.on),
                    ));
                }
            },
        },
        Some(trigger::Kind::Webhook(webhook)) => Trigger::Webhook(WebhookTrigger {
            events: webhook.events,
            actions: webhook.actions,
            mapping: webhook.mapping.into_iter().collect(),
        }),
    };
    trigger.validate()?;
    Ok(trigger)
}

fn millis(field: &str, value: Option<prost_types::Duration>) -> Result<u64> {
    let value = value.ok_or_else(|| Error::invalid(field, "is required"))?;
    let duration = shepherd_platform::validate::non_negative_duration(value)
        .ok_or(())
        .map_err(|_| Error::invalid(field, "must be a non-negative duration"))?;
    Ok(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn trigger_to(trigger: &Trigger) -> pb::Trigger {
    let duration = |ms: u64| prost_types::Duration::try_from(Duration::from_millis(ms)).ok();
    let kind = match trigger {
        Trigger::Manual => trigger::Kind::Manual(pb::ManualTrigger {}),
        Trigger::Interval { period_ms, policy } => trigger::Kind::Interval(pb::IntervalTrigger {
            period: duration(*period_ms),
            policy: Some(policy_to(policy)),
        }),
        Trigger::Cron { expression, policy } => trigger::Kind::Cron(pb::CronTrigger {
            expression: expression.clone(),
            policy: Some(policy_to(policy)),
        }),
        Trigger::Delay { delay_ms } => trigger::Kind::Delay(pb::DelayTrigger {
            delay: duration(*delay_ms),
        }),
        Trigger::AgentRestart { agent } => trigger::Kind::AgentRestart(pb::AgentRestartTrigger {
            agent_id: agent.map(|id| id.to_string()).unwrap_or_default(),
        }),
        Trigger::Chain { parent, on } => trigger::Kind::Chain(pb::ChainTrigger {
            parent_workflow_id: parent.to_string(),
            on: match on {
                ChainOn::Succeeded => pb::ChainOn::Succeeded,
                ChainOn::Failed => pb::ChainOn::Failed,
                ChainOn::Any => pb::ChainOn::Any,
            } as i32,
        }),
        Trigger::Webhook(webhook) => trigger::Kind::Webhook(pb::WebhookTrigger {
            events: webhook.events.clone(),
            actions: webhook.actions.clone(),
            mapping: webhook.mapping.clone().into_iter().collect(),
            // Filled in by the API (it knows where webhooks are served),
            // the secret only in the response that made it.
            url: String::new(),
            secret: String::new(),
        }),
    };
    pb::Trigger { kind: Some(kind) }
}

fn policy_from(field: &str, policy: Option<pb::SchedulePolicy>) -> Result<SchedulePolicy> {
    let Some(policy) = policy else {
        return Ok(SchedulePolicy::default());
    };
    let defaults = SchedulePolicy::default();
    let catch_up = match pb::CatchUp::try_from(policy.catch_up) {
        Ok(pb::CatchUp::Unspecified | pb::CatchUp::Latest) => CatchUp::Latest,
        Ok(pb::CatchUp::None) => CatchUp::None,
        Ok(pb::CatchUp::All) => CatchUp::All,
        Err(_) => {
            return Err(Error::invalid(
                format!("{field}.catch_up"),
                format!("{} is not known; use NONE, LATEST or ALL", policy.catch_up),
            ));
        }
    };
    let overlap = match pb::Overlap::try_from(policy.overlap) {
        Ok(pb::Overlap::Unspecified | pb::Overlap::Allow) => Overlap::Allow,
        Ok(pb::Overlap::Skip) => Overlap::Skip,
        Ok(pb::Overlap::BufferOne) => Overlap::BufferOne,
        Err(_) => {
            return Err(Error::invalid(
                format!("{field}.overlap"),
                format!(
                    "{} is not known; use ALLOW, SKIP or BUFFER_ONE",
                    policy.overlap
                ),
            ));
        }
    };
    let window_ms = match policy.catch_up_window {
        None => defaults.window_ms,
        window => millis(&format!("{field}.catch_up_window"), window)?,
    };
    Ok(SchedulePolicy {
        catch_up,
        window_ms,
        overlap,
    })
}

fn policy_to(policy: &SchedulePolicy) -> pb::SchedulePolicy {
    pb::SchedulePolicy {
        catch_up: match policy.catch_up {
            CatchUp::None => pb::CatchUp::None,
            CatchUp::Latest => pb::CatchUp::Latest,
            CatchUp::All => pb::CatchUp::All,
        } as i32,
        catch_up_window: prost_types::Duration::try_from(policy.window()).ok(),
        overlap: match policy.overlap {
            Overlap::Allow => pb::Overlap::Allow,
            Overlap::Skip => pb::Overlap::Skip,
            Overlap::BufferOne => pb::Overlap::BufferOne,
        } as i32,
    }
}
