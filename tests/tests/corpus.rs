//! The hostile-input corpus, sent to every RPC of both services (found in
//! the services' own descriptors, so a new RPC is covered the day it is
//! added) and to the agent session stream: empty and undecodable messages,
//! and for every field of every request NUL bytes, 1 MiB strings, invalid
//! UTF-8, path traversal and unicode, extreme numbers, NaN, nested garbage,
//! 10,000-entry maps and lists. Every answer must be one of the caller's
//! codes with a short message; an error must store nothing; no service may
//! log an ERROR or panic; and both must still answer afterwards.

use std::collections::HashMap;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use shepherd_e2e::raw::{raw_call, raw_stream_call};
use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use tonic::Code;

/// Codes that mean "your request": anything else (INTERNAL, UNKNOWN,
/// UNAVAILABLE with everything up, ...) is a defect.
const CALLERS_CODES: &[Code] = &[
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    Code::OutOfRange,
    Code::ResourceExhausted,
    Code::Unauthenticated,
];
const MAX_MESSAGE: usize = 1024;
const MIB: usize = 1024 * 1024;

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn key(number: i32, wire: u8, out: &mut Vec<u8>) {
    varint(((number as u64) << 3) | u64::from(wire), out);
}

fn delimited(number: i32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    key(number, 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn varint_field(number: i32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    key(number, 0, &mut out);
    varint(value, &mut out);
    out
}

/// How deep the corpus follows nested messages (request -> message ->
/// message -> field): every field of every message a request can hold is
/// reached, so a field added tomorrow is covered the day it is added.
const MAX_DEPTH: usize = 3;

/// The hostile values of one field, each as an encoded request holding
/// only that field (nested messages: each hostile value of each of their
/// fields, down to `MAX_DEPTH`).
fn field_cases(
    field: &FieldDescriptorProto,
    messages: &HashMap<String, DescriptorProto>,
    depth: usize,
) -> Vec<(String, Vec<u8>)> {
    let number = field.number();
    let name = field.name().to_owned();
    let repeated = field.label() == Label::Repeated;
    let mut cases = Vec::new();
    let mut case = |what: &str, body: Vec<u8>| cases.push((format!("{name}: {what}"), body));
    match field.r#type() {
        Type::String => {
            case("NUL", delimited(number, b"a\0b"));
            case("1 MiB", delimited(number, &vec![b'x'; MIB]));
            case("invalid UTF-8", delimited(number, &[0xc3, 0x28]));
            case(
                "traversal and unicode",
                delimited(number, "../../etc/passwd\n\u{202e}é🐑".as_bytes()),
            );
            if repeated {
                let many: Vec<u8> = (0..10_000).flat_map(|_| delimited(number, b"x")).collect();
                case("10,000 entries", many);
            }
        }
        Type::Bytes => case("1 MiB", delimited(number, &vec![0xff; MIB])),
        Type::Bool
        | Type::Int32
        | Type::Int64
        | Type::Uint32
        | Type::Uint64
        | Type::Enum
        | Type::Sint32
        | Type::Sint64 => {
            case("max", varint_field(number, u64::MAX));
            case("i64 min", varint_field(number, i64::MIN as u64));
            case("i32 max + 1", varint_field(number, 1 << 31));
        }
        Type::Float | Type::Fixed32 | Type::Sfixed32 => {
            let mut nan = Vec::new();
            key(number, 5, &mut nan);
            nan.extend_from_slice(&f32::NAN.to_le_bytes());
            case("NaN", nan);
            let mut inf = Vec::new();
            key(number, 5, &mut inf);
            inf.extend_from_slice(&f32::INFINITY.to_le_bytes());
            case("infinity", inf);
        }
        Type::Double | Type::Fixed64 | Type::Sfixed64 => {
            let mut nan = Vec::new();
            key(number, 1, &mut nan);
            nan.extend_from_slice(&f64::NAN.to_le_bytes());
            case("NaN", nan);
        }
        Type::Message => {
            case("nested garbage", delimited(number, &[0xff, 0xff, 0xff]));
            let type_name = field.type_name().trim_start_matches('.');
            if matches!(
                type_name,
                "google.protobuf.Duration" | "google.protobuf.Timestamp"
            ) {
                case(
                    "i64::MAX seconds",
                    delimited(number, &varint_field(1, i64::MAX as u64)),
                );
                case(
                    "negative",
                    delimited(number, &varint_field(1, (-1i64) as u64)),
                );
            }
            let nested = messages.get(type_name);
            let map_entry =
                nested.is_some_and(|m| m.options.as_ref().is_some_and(|o| o.map_entry()));
            if map_entry {
                let entry = |k: &[u8], v: &[u8]| {
                    let mut entry = delimited(1, k);
                    entry.extend(delimited(2, v));
                    delimited(number, &entry)
                };
                let many: Vec<u8> = (0..10_000)
                    .flat_map(|i| entry(format!("k{i}").as_bytes(), b"v"))
                    .collect();
                case("10,000-entry map", many);
                case("NUL in a key", entry(b"a\0b", b"v"));
                case("NUL in a value", entry(b"k", b"a\0b"));
                case("1 MiB key", entry(&vec![b'x'; MIB], b"v"));
                case("1 MiB value", entry(b"k", &vec![b'x'; MIB]));
            } else if let Some(nested) = nested.filter(|_| depth < MAX_DEPTH) {
                for inner in &nested.field {
                    for (what, body) in field_cases(inner, messages, depth + 1) {
                        cases.push((format!("{name}.{what}"), delimited(number, &body)));
                    }
                }
            }
        }
        _ => {}
    }
    cases
}

/// Rows that an error must not have added.
async fn stored(stack: &Stack) -> anyhow::Result<(i64, i64, i64, i64)> {
    let db = stack.db.client().await?;
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM agent_manager.agents),
                    (SELECT count(*) FROM agent_manager.tasks),
                    (SELECT count(*) FROM scheduler.workflows),
                    (SELECT count(*) FROM scheduler.tasks)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

#[tokio::test]
async fn the_corpus_hurts_no_rpc_of_either_service() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        capture_logs: true,
        ..StackOptions::default()
    })
    .await?;
    // Something to find, so that lookups reach past "not found" too.
    let agent = stack.create_agent("target", am::RestartMode::Never).await?;
    stack.create_workflow("target", &agent.id, true, "").await?;
    let manager = stack.manager.url();
    let scheduler = stack.scheduler.as_ref().expect("scheduler").url();

    let set = FileDescriptorSet::decode(shepherd_proto::FILE_DESCRIPTOR_SET)?;
    let mut messages = HashMap::new();
    for file in &set.file {
        for message in &file.message_type {
            messages.insert(
                format!("{}.{}", file.package(), message.name()),
                message.clone(),
            );
            for nested in &message.nested_type {
                messages.insert(
                    format!("{}.{}.{}", file.package(), message.name(), nested.name()),
                    nested.clone(),
                );
            }
        }
    }

    let mut sent = 0usize;
    let mut failures = Vec::new();
    let mut reached = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let url = match file.package() {
                "shepherd.agentmanager.v1" => &manager,
                "shepherd.scheduler.v1" => &scheduler,
                _ => continue,
            };
            for method in &service.method {
                if method.client_streaming() {
                    continue; // the session stream: its own test below
                }
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let input = messages
                    .get(method.input_type().trim_start_matches('.'))
                    .cloned()
                    .unwrap_or_default();
                let mut cases = vec![
                    ("empty".to_owned(), Vec::new()),
                    (
                        "garbage".to_owned(),
                        vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x12],
                    ),
                ];
                for field in &input.field {
                    cases.extend(field_cases(field, &messages, 1));
                }
                reached.extend(
                    cases
                        .iter()
                        .map(|(what, _)| format!("{}: {what}", method.name())),
                );
                for (what, body) in cases {
                    let before = stored(&stack).await?;
                    let status = if method.server_streaming() {
                        raw_stream_call(url, &path, body).await
                    } else {
                        raw_call(url, &path, body).await
                    };
                    sent += 1;
                    let after = stored(&stack).await?;
                    let code = status.code();
                    // A request of at most ~1 MiB is within every limit:
                    // RESOURCE_EXHAUSTED about "metadata" means the error
                    // echoed the input until its trailer broke.
                    let echoed =
                        code == Code::ResourceExhausted && status.message().contains("metadata");
                    if !CALLERS_CODES.contains(&code) || echoed {
                        failures.push(format!("{path} [{what}]: {code:?} {}", status.message()));
                    }
                    if status.message().len() > MAX_MESSAGE {
                        failures.push(format!(
                            "{path} [{what}]: a {}-byte message",
                            status.message().len()
                        ));
                    }
                    if code != Code::Ok && before != after {
                        failures.push(format!(
                            "{path} [{what}]: {code:?} yet stored {before:?} -> {after:?}"
                        ));
                    }
                }
            }
        }
    }
    // Generated from the descriptors, down to nested fields and map entries
    // (each of these once escaped a hand-written corpus).
    for expected in [
        "ListAgents: labels: NUL in a key",
        "UpdateWorkflow: update_mask.paths: 1 MiB",
        "ListAuditEvents: since: i64::MAX seconds",
        "CreateWorkflow: workflow.trigger.",
        "CreateWorkflow: workflow.concurrency_keys: NUL",
        "PutConcurrencyKey: key.name: 1 MiB",
        "PutConcurrencyKey: key.rate_period.seconds: i64 min",
        "PauseWorkflow: reason: NUL",
        "TriggerWorkflow: priority:",
    ] {
        assert!(
            reached.iter().any(|what| what.starts_with(expected)),
            "the corpus does not reach {expected}"
        );
    }
    sent += session_corpus(&manager, &mut failures).await;
    eprintln!("corpus: {sent} hostile requests sent");
    assert!(sent > 250, "the corpus shrank to {sent} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Both services still answer (the corpus pruned the event log, so the
    // agent's state is asked for, not waited on), and nothing was logged as
    // an ERROR.
    assert_eq!(
        stack.agent(&agent.id).await?.status(),
        am::AgentStatus::Ready
    );
    let listed = stack
        .agents
        .list_agents(am::ListAgentsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.agents.len(), 1);
    stack.runners(&agent.id).await?;
    let logs = stack.service_logs();
    let bad: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("ERROR") || line.contains("panicked"))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    Ok(())
}

/// The agent session stream: no hello, a non-hello first message, bad and
/// huge credentials, garbage frames. Each answers with a caller's code and
/// a short message. Returns how many cases were sent.
async fn session_corpus(url: &str, failures: &mut Vec<String>) -> usize {
    use shepherd_proto::agentmanager::v1::agent_session_client::AgentSessionClient;
    use shepherd_proto::agentmanager::v1::{AgentHeartbeat, AgentMessage, Hello, agent_message};
    let hello = |agent_id: String, session_token: String| AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_id,
            session_token,
            held_tasks: Vec::new(),
            instance_id: String::new(),
        })),
    };
    let cases: Vec<(&str, Vec<AgentMessage>)> = vec![
        (
            "heartbeat first",
            vec![AgentMessage {
                kind: Some(agent_message::Kind::Heartbeat(AgentHeartbeat {})),
            }],
        ),
        ("empty message", vec![AgentMessage { kind: None }]),
        ("bad id", vec![hello("not-an-id".into(), "t".into())]),
        ("1 MiB id", vec![hello("x".repeat(MIB), "t".into())]),
        (
            "unknown agent",
            vec![hello(uuid::Uuid::now_v7().to_string(), "t".into())],
        ),
        (
            "1 MiB token",
            vec![hello(uuid::Uuid::now_v7().to_string(), "x".repeat(MIB))],
        ),
        ("NUL id", vec![hello("a\0b".into(), "t".into())]),
        (
            "NUL instance id",
            vec![AgentMessage {
                kind: Some(agent_message::Kind::Hello(Hello {
                    agent_id: uuid::Uuid::now_v7().to_string(),
                    session_token: "t".into(),
                    held_tasks: Vec::new(),
                    instance_id: "a\0b".into(),
                })),
            }],
        ),
        (
            "instance id one byte over its bound (README: 1-128 bytes)",
            vec![AgentMessage {
                kind: Some(agent_message::Kind::Hello(Hello {
                    agent_id: uuid::Uuid::now_v7().to_string(),
                    session_token: "t".into(),
                    held_tasks: Vec::new(),
                    instance_id: "x".repeat(129),
                })),
            }],
        ),
        (
            "1 MiB held task id",
            vec![AgentMessage {
                kind: Some(agent_message::Kind::Hello(Hello {
                    agent_id: uuid::Uuid::now_v7().to_string(),
                    session_token: "t".into(),
                    held_tasks: vec![shepherd_proto::agentmanager::v1::HeldTask {
                        task_id: "x".repeat(MIB),
                        attempt: 1,
                        deadline: None,
                    }],
                    instance_id: String::new(),
                })),
            }],
        ),
    ];
    let mut sent = 0;
    for (what, messages) in cases {
        sent += 1;
        let channel = match shepherd_testkit::channel(url).await {
            Ok(channel) => channel,
            Err(err) => {
                failures.push(format!("session [{what}]: no channel: {err}"));
                continue;
            }
        };
        let mut client = AgentSessionClient::new(channel);
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            client.connect(tokio_stream::iter(messages)),
        )
        .await;
        let status = match outcome {
            Ok(Ok(_)) => {
                failures.push(format!("session [{what}]: accepted"));
                continue;
            }
            Ok(Err(status)) => status,
            Err(_) => {
                failures.push(format!("session [{what}]: no answer"));
                continue;
            }
        };
        if !CALLERS_CODES.contains(&status.code()) && status.code() != Code::DeadlineExceeded {
            failures.push(format!(
                "session [{what}]: {:?} {}",
                status.code(),
                status.message()
            ));
        }
        if status.message().len() > MAX_MESSAGE {
            failures.push(format!(
                "session [{what}]: a {}-byte message",
                status.message().len()
            ));
        }
    }
    // Garbage frames on the stream itself.
    sent += 1;
    let status = raw_stream_call(
        url,
        "/shepherd.agentmanager.v1.AgentSession/Connect",
        vec![0xff, 0xff, 0xff, 0xff, 0x0f],
    )
    .await;
    if !CALLERS_CODES.contains(&status.code()) || status.code() == Code::Ok {
        failures.push(format!(
            "session [garbage]: {:?} {}",
            status.code(),
            status.message()
        ));
    }
    sent
}
