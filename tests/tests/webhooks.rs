//! Webhook triggers over real HTTP: a GitHub-format signed delivery becomes
//! one task with the mapped fields; a redelivery returns the same task; a
//! bad or missing signature, a rotated-away secret, an oversized body, a
//! filtered event, a body that is not JSON and one the mapping cannot use
//! are all refused with their status and store nothing; a captured
//! delivery replayed makes nothing new, in either signature scheme.

use hmac::{KeyInit, Mac};
use serde_json::Value;
use shepherd_e2e::{Stack, StackOptions};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{self as sched, TaskState};

/// POSTs `body` to `url`; the status and the JSON answer.
async fn post(url: &str, headers: &[(&str, String)], body: &[u8]) -> anyhow::Result<(u16, Value)> {
    let answer = shepherd_e2e::http::request("POST", url, headers, Some(body)).await?;
    Ok((answer.status, answer.json()))
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

type Headers = Vec<(&'static str, String)>;

/// GitHub's headers for an `event` delivery signed with `secret`.
fn github(event: &str, delivery: &str, signature: Option<String>) -> Headers {
    let mut headers = vec![
        ("X-GitHub-Event", event.to_owned()),
        ("X-GitHub-Delivery", delivery.to_owned()),
    ];
    if let Some(signature) = signature {
        headers.push(("X-Hub-Signature-256", signature));
    }
    headers
}

fn issue(action: &str, title: &str) -> Vec<u8> {
    serde_json::json!({
        "action": action,
        "issue": {
            "number": 42,
            "title": title,
            "body": "It crashes on start.",
            "html_url": "https://github.com/acme/app/issues/42",
            "labels": [{"name": "bug"}, {"name": "p1"}],
        },
    })
    .to_string()
    .into_bytes()
}

/// A stack serving webhooks (bodies up to 4 KiB) and a workflow `issues`
/// on issues.opened deliveries; its webhook trigger, with the secret shown
/// once.
async fn issues_hook() -> anyhow::Result<(Stack, sched::Workflow, sched::WebhookTrigger)> {
    let mut stack = Stack::start(StackOptions {
        env: vec![
            ("WEBHOOK_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("WEBHOOK_MAX_BODY_BYTES", "4096".to_owned()),
        ],
        ..StackOptions::default()
    })
    .await?;
    let agent = stack
        .create_agent("triage", am::RestartMode::OnFailure)
        .await?;
    let created = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "issues".into(),
                agent_id: agent.id.clone(),
                enabled: true,
                prompt_template: "echo {{title}}".into(),
                trigger: Some(sched::Trigger {
                    kind: Some(sched::trigger::Kind::Webhook(sched::WebhookTrigger {
                        events: vec!["issues".into()],
                        actions: vec!["opened".into()],
                        mapping: [
                            ("title", "/issue/title"),
                            ("body", "/issue/body"),
                            ("url", "/issue/html_url"),
                            ("labels", "/issue/labels"),
                            ("metadata.number", "/issue/number"),
                        ]
                        .into_iter()
                        .map(|(field, pointer)| (field.to_owned(), pointer.to_owned()))
                        .collect(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let Some(sched::trigger::Kind::Webhook(hook)) = created.trigger.clone().and_then(|t| t.kind)
    else {
        anyhow::bail!("no webhook trigger");
    };
    Ok((stack, created, hook))
}

#[tokio::test]
async fn signed_deliveries_make_one_task_each_and_everything_else_stores_nothing()
-> anyhow::Result<()> {
    let (mut stack, created, hook) = issues_hook().await?;
    assert_eq!(hook.secret.len(), 64, "the secret is shown at creation");
    assert!(
        hook.url.ends_with(&format!("/hooks/{}", created.id)),
        "{}",
        hook.url
    );
    let read = stack
        .workflows
        .get_workflow(sched::GetWorkflowRequest {
            workflow_id: created.id.clone(),
        })
        .await?
        .into_inner();
    let Some(sched::trigger::Kind::Webhook(read)) = read.trigger.and_then(|t| t.kind) else {
        panic!("a webhook trigger");
    };
    assert!(read.secret.is_empty(), "the secret is shown once");
    assert_eq!(read.url, hook.url);

    // A signed issues.opened delivery: one task with the mapped fields.
    let body = issue("opened", "App crashes");
    let headers = github("issues", "d-1", Some(sign(&hook.secret, &body)));
    let (status, answer) = post(&hook.url, &headers, &body).await?;
    assert_eq!(status, 202, "{answer}");
    let task_id = answer["task_id"].as_str().expect("a task id").to_owned();
    let task = stack
        .workflows
        .get_task(sched::GetTaskRequest {
            task_id: task_id.clone(),
        })
        .await?
        .into_inner();
    let fields = task.fields.expect("fields");
    assert_eq!(fields.title, "App crashes");
    assert_eq!(fields.body, "It crashes on start.");
    assert_eq!(fields.url, "https://github.com/acme/app/issues/42");
    assert_eq!(fields.labels, ["bug", "p1"]);
    assert_eq!(fields.metadata["number"], "42");
    assert_eq!(fields.metadata["webhook_event"], "issues");
    stack
        .wait_tasks(std::slice::from_ref(&task_id), TaskState::Succeeded)
        .await?;

    // The same delivery again: the same task.
    let (status, again) = post(&hook.url, &headers, &body).await?;
    assert_eq!(
        (status, again["task_id"].as_str()),
        (202, Some(task_id.as_str()))
    );

    // Everything refused stores nothing.
    let other = issue("opened", "Another");
    let cases: Vec<(&str, Headers, Vec<u8>, u16)> = vec![
        (
            "no signature",
            github("issues", "d-2", None),
            other.clone(),
            401,
        ),
        (
            "a wrong secret",
            github("issues", "d-3", Some(sign("not-the-secret", &other))),
            other.clone(),
            401,
        ),
        (
            "a signature of another body",
            github("issues", "d-4", Some(sign(&hook.secret, &body))),
            other.clone(),
            401,
        ),
        (
            "a filtered event",
            github("push", "d-5", Some(sign(&hook.secret, &other))),
            other.clone(),
            200,
        ),
        {
            let closed = issue("closed", "Closed");
            (
                "a filtered action",
                github("issues", "d-6", Some(sign(&hook.secret, &closed))),
                closed,
                200,
            )
        },
        {
            let unmappable = br#"{"action":"opened","issue":{"number":1}}"#.to_vec();
            (
                "a body the mapping cannot use",
                github("issues", "d-7", Some(sign(&hook.secret, &unmappable))),
                unmappable,
                422,
            )
        },
        {
            let text = b"not json".to_vec();
            (
                "a body that is not JSON",
                github("issues", "d-8", Some(sign(&hook.secret, &text))),
                text,
                400,
            )
        },
        {
            let big = issue("opened", &"x".repeat(8192));
            (
                "an oversized body",
                github("issues", "d-9", Some(sign(&hook.secret, &big))),
                big,
                413,
            )
        },
    ];
    for (what, headers, body, expected) in cases {
        let (status, answer) = post(&hook.url, &headers, &body).await?;
        assert_eq!(status, expected, "{what}: {answer}");
    }
    let unknown = hook.url.replace(&created.id, "no-such-workflow");
    let (status, unknown_answer) = post(
        &unknown,
        &github("issues", "d-10", Some(sign(&hook.secret, &other))),
        &other,
    )
    .await?;
    let (_, bad_signature) = post(
        &hook.url,
        &github("issues", "d-10", Some(sign("not-the-secret", &other))),
        &other,
    )
    .await?;
    assert_eq!(
        (status, &unknown_answer),
        (401, &bad_signature),
        "an unknown workflow looks like a bad signature"
    );
    assert_eq!(
        stack.tasks(&created.id).await?.len(),
        1,
        "refusals stored nothing"
    );

    // Rotation: the old secret stops working, the new one works, and the
    // workflow may be named instead of id'd.
    let rotated = stack
        .workflows
        .rotate_webhook_secret(sched::RotateWebhookSecretRequest {
            workflow_id: created.id.clone(),
        })
        .await?
        .into_inner();
    let Some(sched::trigger::Kind::Webhook(rotated)) = rotated.trigger.and_then(|t| t.kind) else {
        panic!("a webhook trigger");
    };
    assert_ne!(rotated.secret, hook.secret);
    let (status, _) = post(
        &hook.url,
        &github("issues", "d-11", Some(sign(&hook.secret, &other))),
        &other,
    )
    .await?;
    assert_eq!(status, 401, "the old secret after rotation");
    assert_eq!(stack.tasks(&created.id).await?.len(), 1);
    let by_name = hook.url.replace(&created.id, "issues");
    let (status, answer) = post(
        &by_name,
        &github("issues", "d-11", Some(sign(&rotated.secret, &other))),
        &other,
    )
    .await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(stack.tasks(&created.id).await?.len(), 2);
    Ok(())
}

/// Shepherd's scheme: HMAC over "{timestamp}.{delivery id}.{body}".
fn shepherd_signed(secret: &str, timestamp: u64, id: &str, body: &[u8]) -> Headers {
    let mut signed = format!("{timestamp}.{id}.").into_bytes();
    signed.extend_from_slice(body);
    vec![
        ("X-Shepherd-Event", "issues".to_owned()),
        ("X-Shepherd-Delivery", id.to_owned()),
        ("X-Shepherd-Timestamp", timestamp.to_string()),
        ("X-Shepherd-Signature", sign(secret, &signed)),
    ]
}

/// A captured delivery replayed, with a fresh delivery id or later, makes
/// no second task: GitHub's scheme (body-only signature) by the body's
/// digest, Shepherd's by its signed timestamp and delivery id.
#[tokio::test]
async fn a_replayed_delivery_makes_nothing_new() -> anyhow::Result<()> {
    let (stack, created, hook) = issues_hook().await?;
    let body = issue("opened", "Replayed");
    let (status, first) = post(
        &hook.url,
        &github("issues", "captured", Some(sign(&hook.secret, &body))),
        &body,
    )
    .await?;
    assert_eq!(status, 202, "{first}");
    // The attacker resends it with a fresh id: the same task.
    let (status, replay) = post(
        &hook.url,
        &github("issues", "fresh-id", Some(sign(&hook.secret, &body))),
        &body,
    )
    .await?;
    assert_eq!((status, &replay["task_id"]), (202, &first["task_id"]));

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let other = issue("opened", "Signed with time");
    let headers = shepherd_signed(&hook.secret, now, "s-1", &other);
    let (status, signed) = post(&hook.url, &headers, &other).await?;
    assert_eq!(status, 202, "{signed}");
    // Replayed within the window: the same task; with a fresh id: refused.
    let (status, again) = post(&hook.url, &headers, &other).await?;
    assert_eq!((status, &again["task_id"]), (202, &signed["task_id"]));
    let mut fresh = headers.clone();
    fresh[1].1 = "s-2".to_owned();
    assert_eq!(post(&hook.url, &fresh, &other).await?.0, 401);
    // Signed properly, ten minutes ago: refused.
    let old = shepherd_signed(&hook.secret, now - 600, "s-3", &other);
    assert_eq!(post(&hook.url, &old, &other).await?.0, 401);
    assert_eq!(
        stack.tasks(&created.id).await?.len(),
        2,
        "two deliveries, two tasks"
    );
    Ok(())
}

/// With TLS configured the webhook endpoint speaks TLS too (the services'
/// certificate): a signed delivery over https makes its task, plain HTTP
/// gets no answer.
#[tokio::test]
async fn webhooks_are_served_over_tls_when_the_services_are() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("shepherd-hook-tls-{}", uuid::Uuid::now_v7()));
    let tls = shepherd_e2e::TlsFiles::generate(&dir)?;
    let mut stack = Stack::start(StackOptions {
        tls: Some(tls.clone()),
        env: vec![("WEBHOOK_LISTEN_ADDR", "127.0.0.1:0".to_owned())],
        ..StackOptions::default()
    })
    .await?;
    let agent = stack
        .create_agent("tls-hooks", am::RestartMode::Never)
        .await?;
    let created = stack
        .workflows
        .create_workflow(sched::CreateWorkflowRequest {
            workflow: Some(sched::Workflow {
                name: "tls-hooks".into(),
                agent_id: agent.id.clone(),
                enabled: true,
                prompt_template: "echo {{title}}".into(),
                trigger: Some(sched::Trigger {
                    kind: Some(sched::trigger::Kind::Webhook(sched::WebhookTrigger {
                        mapping: [("title".to_owned(), "/issue/title".to_owned())].into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let Some(sched::trigger::Kind::Webhook(hook)) = created.trigger.and_then(|t| t.kind) else {
        anyhow::bail!("no webhook trigger");
    };
    assert!(hook.url.starts_with("https://"), "{}", hook.url);
    let url = hook.url.replacen("127.0.0.1", "localhost", 1);
    let body = issue("opened", "Over TLS");
    let answer = shepherd_e2e::http::request_tls(
        "POST",
        &url,
        &tls.ca,
        &github("issues", "tls-1", Some(sign(&hook.secret, &body))),
        Some(&body),
    )
    .await?;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let plain = shepherd_e2e::http::request(
        "POST",
        &hook.url.replacen("https://", "http://", 1),
        &github("issues", "tls-2", Some(sign(&hook.secret, &body))),
        Some(&body),
    )
    .await;
    assert!(
        plain.map_or(true, |answer| answer.status == 0),
        "plain HTTP was answered"
    );
    assert_eq!(stack.tasks(&created.id).await?.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
