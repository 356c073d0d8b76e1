//! The deployment files stay true to the binaries: every environment
//! variable docker-compose sets for a Shepherd service is one that service
//! reads. (The file's syntax is checked with `docker-compose config` by the
//! README's test command.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use shepherd_testkit::bin_path;

/// Variables read outside clap (logging and telemetry set-up in
/// `shepherd-telemetry`).
const READ_BY_PLATFORM: &[&str] = &[
    "RUST_LOG",
    "LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_TRACES_LEVEL",
];

fn compose_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
}

/// `service -> environment keys`, from the compose file's
/// `services.<name>.environment` maps (a deliberately small reader for the
/// map form this file uses).
fn environments(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut result: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_services = false;
    let mut service: Option<String> = None;
    let mut env_indent: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent == 0 {
            in_services = trimmed == "services:";
            service = None;
            env_indent = None;
            continue;
        }
        if !in_services {
            continue;
        }
        if let Some(env) = env_indent {
            if indent > env {
                if let (Some(service), Some((key, _))) = (&service, trimmed.split_once(':')) {
                    result
                        .entry(service.clone())
                        .or_default()
                        .push(key.trim().to_owned());
                }
                continue;
            }
            env_indent = None;
        }
        if indent == 2 {
            service = trimmed.strip_suffix(':').map(str::to_owned);
        } else if trimmed == "environment:" {
            env_indent = Some(indent);
        }
    }
    result
}

fn help(binary: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new(bin_path(binary)?)
        .arg("--help")
        .output()?;
    anyhow::ensure!(output.status.success(), "{binary} --help failed");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `container -> env names` of the Kubernetes manifest's containers (the
/// `- name: X` entries under each container's `env:`; a deliberately small
/// reader for the form these files use).
fn container_envs(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut envs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut container = None;
    let mut in_env = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(name) = trimmed.strip_prefix("- name: ")
            && indent == 8
        {
            container = Some(name.trim().to_owned());
            in_env = false;
        } else if trimmed == "env:" {
            in_env = true;
        } else if in_env && indent <= 10 && !trimmed.starts_with("- name:") && !trimmed.is_empty() {
            in_env = false;
        } else if let (true, Some(container), Some(name)) =
            (in_env, &container, trimmed.strip_prefix("- name: "))
        {
            envs.entry(container.clone())
                .or_default()
                .push(name.trim().to_owned());
        }
    }
    envs
}

#[test]
fn kubernetes_manifests_set_only_variables_the_binaries_read() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let manifest = std::fs::read_to_string(root.join("shepherd.yaml"))?;
    let services = container_envs(&manifest);
    for binary in ["agent-manager", "scheduler"] {
        let keys = services.get(binary).cloned().unwrap_or_default();
        assert!(
            keys.len() >= 4,
            "no environment found for {binary}: {services:?}"
        );
        let help = help(binary)?;
        for key in keys {
            let read = READ_BY_PLATFORM.contains(&key.as_str())
                || help.contains(&format!("[env: {key}="))
                || help.contains(&format!("[env: {key}]"))
                // Set only to be expanded in another value (`$(POD_IP)`).
                || manifest.contains(&format!("$({key})"));
            assert!(
                read,
                "the manifest sets {key} for {binary}, which does not read it"
            );
        }
    }
    let agent = container_envs(&std::fs::read_to_string(root.join("external-agent.yaml"))?);
    let keys = agent.get("agent").cloned().unwrap_or_default();
    // What the agent SDK reads (`AgentConfig::from_env`) for an external agent.
    let sdk = [
        "SHEPHERD_AGENT_ID",
        "SHEPHERD_AGENT_CREDENTIAL",
        "SHEPHERD_MANAGER_URL",
        "SHEPHERD_MANAGER_CA_FILE",
        "SHEPHERD_ORPHAN_TIMEOUT",
        "RUST_LOG",
    ];
    assert!(
        keys.contains(&"SHEPHERD_AGENT_CREDENTIAL".to_owned()),
        "{keys:?}"
    );
    for key in keys {
        assert!(
            sdk.contains(&key.as_str()),
            "the external agent sets {key}, which the SDK does not read"
        );
    }
    Ok(())
}

#[test]
fn compose_sets_only_variables_the_binaries_read() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(compose_file())?;
    let environments = environments(&text);
    for (service, binary) in [
        ("agent-manager", "agent-manager"),
        ("agent-manager-2", "agent-manager"),
        ("scheduler", "scheduler"),
        ("scheduler-2", "scheduler"),
        ("console", "shepherd-console"),
    ] {
        let keys = environments.get(service).cloned().unwrap_or_default();
        assert!(!keys.is_empty(), "no environment found for {service}");
        let help = help(binary)?;
        for key in keys {
            let read =
                // clap prints `[env: KEY=value]`, or `[env: KEY]` for secrets.
                READ_BY_PLATFORM.contains(&key.as_str())
                    || help.contains(&format!("[env: {key}="))
                    || help.contains(&format!("[env: {key}]"));
            assert!(
                read,
                "docker-compose sets {key} for {service}, but {binary} does not read it"
            );
        }
    }
    Ok(())
}

#[test]
fn the_reader_finds_environment_maps() {
    let text = "services:\n  a:\n    image: x\n    environment:\n      ONE: 1\n      TWO: \"2\"\n    ports: []\n  b:\n    environment:\n      THREE: 3\nvolumes:\n  v:\n";
    let envs = environments(text);
    assert_eq!(envs["a"], ["ONE", "TWO"]);
    assert_eq!(envs["b"], ["THREE"]);
}
