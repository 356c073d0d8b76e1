//! `shepherd tasks ...`.

use shepherd_proto::scheduler::v1 as sched;

use crate::cli::TaskCommand;
use crate::clients::{Clients, UsageError, collect_pages};
use crate::render;

impl Clients {
    pub(super) async fn tasks(&mut self, command: TaskCommand) -> anyhow::Result<()> {
        match command {
            TaskCommand::List {
                workflow,
                state,
                dead_letter,
            } => {
                let workflow_id = self.workflow_id(&workflow).await?;
                let state = match state {
                    None => sched::TaskState::Unspecified,
                    Some(s) => {
                        sched::TaskState::from_str_name(&format!("TASK_STATE_{}", s.to_uppercase()))
                            .ok_or_else(|| {
                                UsageError(format!(
                                    "state {s:?}: use pending, dispatched, succeeded, failed, timed_out, cancelled or skipped"
                                ))
                            })?
                    }
                };
                let client = self.workflows.clone();
                let all = collect_pages(|page_token| {
                    let mut client = client.clone();
                    let request = sched::ListTasksRequest {
                        workflow_id: workflow_id.clone(),
                        state: state as i32,
                        page_size: 1000,
                        page_token,
                        dead_letter,
                    };
                    async move {
                        let page = client.list_tasks(request).await?.into_inner();
                        Ok((page.tasks, page.next_page_token))
                    }
                })
                .await?;
                render::many(self.output, &all);
            }
            TaskCommand::Get { task } => {
                let task = self
                    .workflows
                    .get_task(sched::GetTaskRequest { task_id: task })
                    .await?
                    .into_inner();
                render::one(self.output, &task);
            }
            TaskCommand::Cancel { task } => {
                let task = self
                    .workflows
                    .cancel_task(sched::CancelTaskRequest { task_id: task })
                    .await?
                    .into_inner();
                render::one(self.output, &task);
            }
            TaskCommand::Watch {
                task,
                workflow,
                after,
            } => {
                let workflow = match workflow {
                    Some(workflow) => self.workflow_id(&workflow).await?,
                    None => String::new(),
                };
                self.watch_tasks(after, workflow, task.unwrap_or_default())
                    .await?;
            }
        }
        Ok(())
    }

    /// Follows the task change log; on a broken stream, resumes after the
    /// last cursor seen. Following one task ends when it is final.
    async fn watch_tasks(
        &mut self,
        after: String,
        workflow_id: String,
        task_id: String,
    ) -> anyhow::Result<()> {
        let mut cursor = after;
        let mut reconnect = shepherd_client::Reconnect::default();
        loop {
            let stream = self
                .workflows
                .watch_tasks(sched::WatchTasksRequest {
                    after_cursor: cursor.clone(),
                    workflow_id: workflow_id.clone(),
                    task_id: task_id.clone(),
                })
                .await;
            let mut stream = match stream {
                Ok(stream) => stream.into_inner(),
                Err(status) => {
                    if reconnect.retry(&status).await {
                        continue;
                    }
                    return Err(status.into());
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        reconnect.reset();
                        match message.kind {
                            Some(sched::watch_tasks_response::Kind::Event(event)) => {
                                render::task_event(self.output, &event);
                                cursor = event.cursor.clone();
                                let done = event.progress.is_none()
                                    && !matches!(
                                        event.state(),
                                        sched::TaskState::Pending | sched::TaskState::Dispatched
                                    );
                                if !task_id.is_empty() && done {
                                    return Ok(());
                                }
                            }
                            Some(sched::watch_tasks_response::Kind::Heartbeat(beat)) => {
                                cursor = beat.cursor;
                            }
                            None => {}
                        }
                    }
                    Ok(None) | Err(_) => {
                        eprintln!("task stream interrupted; resuming after {cursor}");
                        break;
                    }
                }
            }
        }
    }
}
