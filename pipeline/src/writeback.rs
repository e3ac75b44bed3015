//! The write-back worker: patient confirmations and cancellations go back to the EHR, each exactly
//! once, also across restarts (see `store::writeback` for the batch protocol).

use std::sync::Arc;

use medrelay_mapping::ports::{WriteBack, WriteBackError};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::store::{Store, StoreResult};

/// What a write-back pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteBackReport {
    pub batches: u64,
    pub items: u64,
    pub errors: u64,
}

/// Writes replies back to each source's target.
pub struct WriteBackWorker {
    store: Store,
    targets: Vec<(String, Arc<dyn WriteBack>)>,
    clock: Arc<dyn Clock>,
}

impl WriteBackWorker {
    /// A worker with one target per source name.
    pub fn new(
        store: Store,
        targets: Vec<(String, Arc<dyn WriteBack>)>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        WriteBackWorker {
            store,
            targets,
            clock,
        }
    }

    /// Finishes incomplete batches, then writes new ones.
    pub async fn run_once(&self) -> StoreResult<WriteBackReport> {
        let mut report = WriteBackReport::default();
        for (source, target) in &self.targets {
            // Replies go back in order (a cancel after a confirm must not be overtaken by it): a
            // batch waiting out its backoff holds the target, and a failure stops the pass.
            let incomplete = self
                .store
                .incomplete_batches(source, self.clock.now())
                .await?;
            if incomplete.iter().any(|(_, due)| !due) {
                continue;
            }
            let mut batches: Vec<i64> = incomplete.into_iter().map(|(id, _)| id).collect();
            if let Some(b) = self.store.assign_batch(source, self.clock.now()).await? {
                batches.push(b);
            }
            for batch_id in batches {
                let items = self.store.batch_items(batch_id).await?;
                let batch = medrelay_mapping::ports::WriteBackBatch { batch_id, items };
                let t = Arc::clone(target);
                let written = tokio::task::spawn_blocking(move || {
                    let r = t.write_batch(&batch);
                    (r, batch.items.len())
                })
                .await;
                match written {
                    Ok((Ok(receipt), n)) => {
                        self.store
                            .complete_batch(batch_id, &receipt.location, n, self.clock.now())
                            .await?;
                        info!(source = %source, batch = batch_id, items = n, location = %receipt.location, "write-back batch written");
                        report.batches += 1;
                        report.items += n as u64;
                    }
                    Ok((Err(e), _)) => {
                        report.errors += 1;
                        let permanent = matches!(e, WriteBackError::Permanent(_));
                        warn!(source = %source, batch = batch_id, error = %e, permanent, "write-back failed; will retry with backoff");
                        self.store
                            .fail_batch(batch_id, &e.to_string(), permanent, self.clock.now())
                            .await?;
                        break;
                    }
                    Err(e) => {
                        report.errors += 1;
                        warn!(source = %source, batch = batch_id, error = %e, "write-back task failed");
                        break;
                    }
                }
            }
        }
        Ok(report)
    }
}
