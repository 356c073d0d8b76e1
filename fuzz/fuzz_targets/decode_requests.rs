//! Any bytes, decoded as every request either service accepts (and the
//! agent session's messages): the decoders must never panic, whatever the
//! input. The services' own decoding is this code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1 as sched;

fuzz_target!(|data: &[u8]| {
    let _ = am::CreateAgentRequest::decode(data);
    let _ = am::ListAgentsRequest::decode(data);
    let _ = am::DispatchTaskRequest::decode(data);
    let _ = am::BatchGetTaskStatesRequest::decode(data);
    let _ = am::WatchAgentEventsRequest::decode(data);
    let _ = am::GetAgentLogsRequest::decode(data);
    let _ = am::AgentMessage::decode(data);
    let _ = sched::CreateWorkflowRequest::decode(data);
    let _ = sched::UpdateWorkflowRequest::decode(data);
    let _ = sched::TriggerWorkflowRequest::decode(data);
    let _ = sched::ListTasksRequest::decode(data);
    let _ = sched::WatchTasksRequest::decode(data);
});
