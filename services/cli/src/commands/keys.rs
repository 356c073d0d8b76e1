//! `shepherd keys`: concurrency keys.

use shepherd_proto::scheduler::v1 as sched;

use crate::cli::KeyCommand;
use crate::clients::Clients;
use crate::render;

impl Clients {
    pub(super) async fn keys(&mut self, command: KeyCommand) -> anyhow::Result<()> {
        match command {
            KeyCommand::List => {
                let keys = self
                    .workflows
                    .list_concurrency_keys(sched::ListConcurrencyKeysRequest {})
                    .await?
                    .into_inner()
                    .keys;
                render::many(self.output, &keys);
            }
            KeyCommand::Put {
                name,
                limit,
                rate,
                per,
            } => {
                let key = self
                    .workflows
                    .put_concurrency_key(sched::PutConcurrencyKeyRequest {
                        key: Some(sched::ConcurrencyKey {
                            name,
                            max_running: limit,
                            rate_limit: rate.unwrap_or(0),
                            rate_period: per
                                .and_then(|per| prost_types::Duration::try_from(per).ok()),
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner();
                render::one(self.output, &key);
            }
            KeyCommand::Delete { name } => {
                self.workflows
                    .delete_concurrency_key(sched::DeleteConcurrencyKeyRequest {
                        name: name.clone(),
                    })
                    .await?;
                eprintln!("deleted key {name}");
            }
        }
        Ok(())
    }
}
