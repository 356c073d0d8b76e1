//! `shepherd approvals`: what agents ask before using a tool, and the
//! decisions.

use shepherd_proto::agentmanager::v1::{self as am, agent_event};

use crate::cli::{ApprovalCommand, Output};
use crate::clients::{Clients, UsageError};
use crate::render;

impl Clients {
    pub(crate) async fn approvals(&mut self, command: ApprovalCommand) -> anyhow::Result<()> {
        match command {
            ApprovalCommand::List {
                state,
                agent,
                workflow,
            } => {
                let agent_id = match agent {
                    Some(agent) => self.agent_id(&agent).await?,
                    None => String::new(),
                };
                let workflow_id = match workflow {
                    Some(workflow) => self.workflow_id(&workflow).await?,
                    None => String::new(),
                };
                let approvals = self
                    .list_approvals(parse_state(&state)?, agent_id, workflow_id)
                    .await?;
                render::many(self.output(), &approvals);
            }
            ApprovalCommand::Get { approval } => {
                let approval = self
                    .agents
                    .get_approval(am::GetApprovalRequest {
                        approval_id: approval,
                    })
                    .await?
                    .into_inner();
                render::one(self.output(), &approval);
            }
            ApprovalCommand::Approve { approval, comment } => {
                self.decide(approval, am::Decision::Approve, comment)
                    .await?;
            }
            ApprovalCommand::Deny { approval, comment } => {
                self.decide(approval, am::Decision::Deny, comment).await?;
            }
            ApprovalCommand::Watch { limit } => self.watch_approvals(limit).await?,
        }
        Ok(())
    }

    /// Every approval matching, newest first (all pages).
    pub(crate) async fn list_approvals(
        &self,
        state: am::ApprovalState,
        agent_id: String,
        workflow_id: String,
    ) -> anyhow::Result<Vec<am::Approval>> {
        let mut approvals = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .agents
                .clone()
                .list_approvals(am::ListApprovalsRequest {
                    state: state as i32,
                    agent_id: agent_id.clone(),
                    workflow_id: workflow_id.clone(),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            approvals.extend(page.approvals);
            if page.next_page_token.is_empty() {
                return Ok(approvals);
            }
            page_token = page.next_page_token;
        }
    }

    /// Decides and prints the approval as it stands; says so when someone
    /// decided it before (that decision stands).
    async fn decide(
        &mut self,
        approval_id: String,
        decision: am::Decision,
        comment: String,
    ) -> anyhow::Result<()> {
        let approval = self
            .agents
            .decide_approval(am::DecideApprovalRequest {
                approval_id,
                decision: decision as i32,
                comment,
            })
            .await?
            .into_inner();
        let wanted = match decision {
            am::Decision::Approve => am::ApprovalState::Approved,
            _ => am::ApprovalState::Denied,
        };
        if approval.state() != wanted && self.output() == Output::Table {
            eprintln!(
                "note: approval {} was {} already (by {}); that decision stands",
                approval.id,
                render::approval_state(&approval),
                approval.decided_by
            );
        }
        render::one(self.output(), &approval);
        Ok(())
    }

    /// The pending approvals, then approval events as they happen (from
    /// the event log, resumed after a disconnect).
    async fn watch_approvals(&mut self, limit: Option<usize>) -> anyhow::Result<()> {
        // "Now" first, so nothing between the listing and the stream is
        // missed: the stream starts right after it.
        let cursor = self
            .agents
            .get_manager_info(am::GetManagerInfoRequest {})
            .await?
            .into_inner()
            .latest_sequence;
        let pending = self
            .list_approvals(am::ApprovalState::Pending, String::new(), String::new())
            .await?;
        render::many(self.output(), &pending);
        self.watch(cursor, String::new(), limit, |event| {
            matches!(
                event.kind,
                Some(
                    agent_event::Kind::ApprovalRequested(_) | agent_event::Kind::ApprovalDecided(_)
                )
            )
        })
        .await
    }
}

fn parse_state(text: &str) -> anyhow::Result<am::ApprovalState> {
    Ok(match text {
        "all" => am::ApprovalState::Unspecified,
        "pending" => am::ApprovalState::Pending,
        "approved" => am::ApprovalState::Approved,
        "denied" => am::ApprovalState::Denied,
        "expired" => am::ApprovalState::Expired,
        "withdrawn" => am::ApprovalState::Withdrawn,
        other => {
            return Err(UsageError(format!(
                "--state {other:?}: use pending, approved, denied, expired, withdrawn or all"
            ))
            .into());
        }
    })
}
