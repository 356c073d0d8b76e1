//! What each RPC of the scheduler needs of its caller's role (the README's
//! role table; a test checks every RPC of the descriptor is here).

use shepherd_platform::auth::Permission;

pub(crate) fn permission(method: &str) -> Option<Permission> {
    use Permission::*;
    Some(match method {
        "GetWorkflow"
        | "ListWorkflows"
        | "GetTask"
        | "ListTasks"
        | "ListRunners"
        | "WatchTasks"
        | "ExplainWorkflow"
        | "ListConcurrencyKeys"
        | "ListAgentPauses"
        | "ListBudgets" => Read,
        "CreateWorkflow"
        | "UpdateWorkflow"
        | "DeleteWorkflow"
        | "TriggerWorkflow"
        | "CancelTask"
        | "RotateWebhookSecret"
        | "PutConcurrencyKey"
        | "PauseWorkflow"
        | "ResumeWorkflow"
        | "BackfillWorkflow"
        | "PauseAgent"
        | "PutBudget"
        | "DeleteBudget"
        | "ResumeAgent"
        | "DeleteConcurrencyKey" => Operate,
        "ListAuditEvents" => Administer,
        _ => return None,
    })
}
