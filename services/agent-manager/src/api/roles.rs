//! What each RPC of the agent-manager needs of its caller's role (the
//! README's role table; a test checks every RPC of the descriptor is
//! here).

use shepherd_platform::auth::Permission;

pub(crate) fn permission(method: &str) -> Option<Permission> {
    use Permission::*;
    Some(match method {
        "GetAgent" | "ListAgents" | "GetAgentLogs" | "BatchGetTaskStates" | "WatchAgentEvents"
        | "GetManagerInfo" | "ListApprovals" | "GetApproval" => Read,
        "CreateAgent"
        | "StartAgent"
        | "StopAgent"
        | "RestartAgent"
        | "DeleteAgent"
        | "RotateAgentCredential" => Operate,
        "DispatchTask" | "DispatchTasks" | "CancelTask" | "ReportBudgetExhausted" => Dispatch,
        "DecideApproval" => Approve,
        "PruneEvents" | "ListAuditEvents" => Administer,
        _ => return None,
    })
}
