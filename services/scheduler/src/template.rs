//! Prompt templates: `{{field}}` placeholders replaced by a task's fields.
//! Known fields: title, body, url, labels (comma-separated) and
//! metadata.KEY. A template naming anything else is rejected when the
//! workflow is created or updated, never at dispatch time.

use crate::error::Error;
use crate::model::{Rendered, TaskFields, Workflow};

/// A placeholder in a template.
#[derive(Debug, PartialEq, Eq)]
enum Field<'a> {
    Title,
    Body,
    Url,
    Labels,
    Metadata(&'a str),
}

/// Pieces of a parsed template, in order.
enum Piece<'a> {
    Text(&'a str),
    Field(Field<'a>),
}

fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        pieces.push(Piece::Text(&rest[..open]));
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("unclosed placeholder at {:?}", &rest[open..]))?;
        let name = after[..close].trim();
        let field = match name {
            "title" => Field::Title,
            "body" => Field::Body,
            "url" => Field::Url,
            "labels" => Field::Labels,
            // A chained task carries its parent's in its metadata.
            "parent.output" | "parent.outcome" | "parent.task_id" | "parent.workflow_id"
            | "parent.title" | "parent.body" | "parent.url" => Field::Metadata(name),
            other => match other.strip_prefix("metadata.") {
                Some(key) if !key.is_empty() => Field::Metadata(key),
                _ => {
                    return Err(format!(
                        "unknown field {{{{{name}}}}}; use title, body, url, labels, metadata.KEY or (chained tasks) parent.output, parent.outcome, parent.task_id, parent.workflow_id, parent.title, parent.body, parent.url"
                    ));
                }
            },
        };
        pieces.push(Piece::Field(field));
        rest = &after[close + 2..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

pub(crate) fn validate(template: &str) -> Result<(), Error> {
    parse(template)
        .map(drop)
        .map_err(|reason| Error::invalid("workflow.prompt_template", reason))
}

/// Renders a template for /bin/sh: every placeholder becomes a quoted
/// reference to the variable that carries the field (`"$SHEPHERD_TASK_TITLE"`),
/// so a field's value reaches the script as one word of data and is never
/// parsed as shell, whatever it contains. (Placeholders must therefore not
/// be quoted in the template: `echo {{title}}`, not `echo '{{title}}'`.)
pub(crate) fn render_shell(template: &str) -> Result<String, Error> {
    use shepherd_proto::task_env;
    let pieces =
        parse(template).map_err(|reason| Error::invalid("workflow.prompt_template", reason))?;
    let mut out = String::with_capacity(template.len() + 32);
    for piece in pieces {
        let variable = match piece {
            Piece::Text(text) => {
                out.push_str(text);
                continue;
            }
            Piece::Field(Field::Title) => task_env::TITLE.to_owned(),
            Piece::Field(Field::Body) => task_env::BODY.to_owned(),
            Piece::Field(Field::Url) => task_env::URL.to_owned(),
            Piece::Field(Field::Labels) => task_env::LABELS.to_owned(),
            Piece::Field(Field::Metadata(key)) => task_env::metadata(key),
        };
        out.push_str("\"${");
        out.push_str(&variable);
        out.push_str("}\"");
    }
    Ok(out)
}

/// Renders a validated template. Missing metadata keys render empty.
pub(crate) fn render(template: &str, fields: &TaskFields) -> Result<String, Error> {
    let pieces =
        parse(template).map_err(|reason| Error::invalid("workflow.prompt_template", reason))?;
    let mut out = String::with_capacity(template.len() + fields.body.len());
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Field(Field::Title) => out.push_str(&fields.title),
            Piece::Field(Field::Body) => out.push_str(&fields.body),
            Piece::Field(Field::Url) => out.push_str(&fields.url),
            Piece::Field(Field::Labels) => out.push_str(&fields.labels.join(",")),
            Piece::Field(Field::Metadata(key)) => {
                out.push_str(fields.metadata.get(key).map(String::as_str).unwrap_or(""))
            }
        }
    }
    Ok(out)
}

/// A new task of `workflow`, rendered from its fields.
pub(crate) fn render_task(
    workflow: &Workflow,
    fields: &TaskFields,
    timeout: Option<std::time::Duration>,
) -> Result<Rendered, Error> {
    Ok(Rendered {
        prompt: render(&workflow.prompt_template, fields)?,
        script: render_shell(&workflow.prompt_template)?,
        timeout: timeout.map_or(workflow.task_timeout, |t| t.min(workflow.task_timeout)),
        tool_policy: workflow.tool_policy.clone(),
        priority: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_field() {
        let fields = TaskFields {
            title: "T".into(),
            body: "B".into(),
            url: "U".into(),
            labels: vec!["a".into(), "b".into()],
            metadata: [("repo".to_string(), "shepherd".to_string())].into(),
        };
        let out = render(
            "{{title}}|{{ body }}|{{url}}|{{labels}}|{{metadata.repo}}|{{metadata.none}}",
            &fields,
        )
        .unwrap();
        assert_eq!(out, "T|B|U|a,b|shepherd|");
        assert_eq!(render("plain", &fields).unwrap(), "plain");
    }

    #[test]
    fn shell_rendering_refers_to_fields_only_through_the_environment() {
        let script =
            render_shell("echo {{title}} > /tmp/{{ metadata.team-name }}; {{labels}}").unwrap();
        assert_eq!(
            script,
            "echo \"${SHEPHERD_TASK_TITLE}\" > /tmp/\"${SHEPHERD_TASK_METADATA_TEAM_NAME}\"; \"${SHEPHERD_TASK_LABELS}\""
        );
        assert_eq!(render_shell("no fields; ls").unwrap(), "no fields; ls");
        assert!(render_shell("{{nope}}").is_err());
    }

    #[test]
    fn rejects_unknown_and_unclosed_fields() {
        assert!(validate("{{title}} {{author}}").is_err());
        assert!(validate("{{title").is_err());
        assert!(validate("{{metadata.}}").is_err());
        assert!(validate("no placeholders").is_ok());
    }
}
