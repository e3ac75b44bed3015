//! Wiring: the pipeline's parts around one store, and the `tick` that advances all of them.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Compiled;
use crate::inbound::{Inbound, InboundReport};
use crate::inbox::{InboxReport, StaffInbox};
use crate::ingest::Ingest;
use crate::schedule::{PlanReport, Scheduler};
use crate::send::{SendReport, Sender};
use crate::store::{Store, StoreResult};
use crate::whatsapp::WhatsAppTransport;
use crate::whatsapp::pacing::{PacedTransport, Pacing};
use crate::whatsapp::simulator::Simulator;
use crate::writeback::{WriteBackReport, WriteBackWorker};
use medrelay_mapping::ports::WriteBack;

/// What one tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    pub plan: PlanReport,
    pub send: SendReport,
    pub inbound: InboundReport,
    pub writeback: WriteBackReport,
    /// Staff replies from the inbox and reply-SLA alerts.
    pub inbox: InboxReport,
    /// Another instance holds the outbound lease: this one only planned.
    pub standby: bool,
}

/// The outbound lease's name (one sender per database; see `store::lease`).
pub const OUTBOUND_LEASE: &str = "medrelay-outbound";

impl TickReport {
    /// Whether the tick did anything at all (loops run until a tick is idle).
    pub fn is_idle(&self) -> bool {
        self.plan.appointments == 0
            && self.send.claimed == 0
            && self.inbound.webhooks == 0
            && self.writeback.batches == 0
            && self.inbox.sent == 0
            && self.inbox.failed == 0
    }
}

/// The assembled pipeline.
pub struct Service {
    pub store: Store,
    pub ingest: Ingest,
    pub scheduler: Scheduler,
    pub sender: Sender,
    pub inbound: Inbound,
    pub writeback: WriteBackWorker,
    /// Sends staff replies queued from the console or `medrelay inbox`.
    pub inbox: StaffInbox,
    /// Present when WhatsApp is the built-in simulator: its webhooks are delivered in-process.
    pub simulator: Option<Arc<Simulator>>,
    /// The WhatsApp transport itself (unpaced): where the console fetches a patient's media.
    pub media_source: Arc<dyn WhatsAppTransport>,
    /// Where alerts are pushed, when configured (`medrelay run` delivers after each pass).
    pub alert_sink: Option<crate::alerts::AlertSink>,
    /// This process's timings and counters for `/metrics` (the sender's, shared with the
    /// listeners and endpoints the service starts).
    pub instruments: Arc<crate::instruments::Instruments>,
    /// The clock every part runs on.
    pub clock: Arc<dyn Clock>,
}

impl Service {
    /// Wires the parts. With `simulator`, it is also the transport.
    pub fn new(
        store: Store,
        config: Arc<Compiled>,
        transport: Arc<dyn WhatsAppTransport>,
        simulator: Option<Arc<Simulator>>,
        write_back: Vec<(String, Arc<dyn WriteBack>)>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let sender = Sender::new(
            store.clone(),
            config.clone(),
            transport.clone(),
            clock.clone(),
        );
        Service {
            ingest: Ingest::new(store.clone(), clock.clone()),
            scheduler: Scheduler::new(store.clone(), config.clone(), clock.clone()),
            instruments: sender.instruments.clone(),
            sender,
            inbox: StaffInbox::new(store.clone(), transport.clone(), clock.clone()),
            inbound: Inbound::new(store.clone(), config, transport.clone(), clock.clone()),
            media_source: transport,
            writeback: WriteBackWorker::new(store.clone(), write_back, clock.clone()),
            clock,
            store,
            simulator,
            alert_sink: None,
        }
    }

    /// Like [`Service::new`], with sends paced for a real business number: outbox jobs respect the
    /// throughput and pair limits, and service replies to patients take a throughput slot too.
    pub fn new_with_pacer(
        store: Store,
        config: Arc<Compiled>,
        transport: Arc<dyn WhatsAppTransport>,
        simulator: Option<Arc<Simulator>>,
        write_back: Vec<(String, Arc<dyn WriteBack>)>,
        clock: Arc<dyn Clock>,
        pacer: Arc<dyn Pacing>,
    ) -> Self {
        let paced: Arc<dyn WhatsAppTransport> =
            Arc::new(PacedTransport::new(transport.clone(), pacer.clone()));
        let sender = Sender::with_pacer(
            store.clone(),
            config.clone(),
            transport.clone(),
            clock.clone(),
            pacer,
        );
        Service {
            ingest: Ingest::new(store.clone(), clock.clone()),
            scheduler: Scheduler::new(store.clone(), config.clone(), clock.clone()),
            instruments: sender.instruments.clone(),
            sender,
            inbox: StaffInbox::new(store.clone(), paced.clone(), clock.clone()),
            inbound: Inbound::new(store.clone(), config, paced, clock.clone()),
            media_source: transport,
            writeback: WriteBackWorker::new(store.clone(), write_back, clock.clone()),
            clock,
            store,
            simulator,
            alert_sink: None,
        }
    }

    /// Applies a reloaded configuration (templates, plans, policies, texts) to the parts that
    /// use it; transport, pacing, halts, listeners and the store stay as they are. Returns how
    /// many future appointments will be planned again because the plan changed.
    pub async fn reconfigure(&mut self, config: Arc<Compiled>) -> StoreResult<u64> {
        self.scheduler = self.scheduler.with_config(config.clone());
        self.sender = self.sender.with_config(config.clone());
        self.inbound = self.inbound.with_config(config.clone());
        self.store
            .plan_changed(&config.plan_fingerprint(), self.clock.now())
            .await
    }

    /// Plans, sends due steps (in batches of `send_batch`), delivers the simulator's webhooks,
    /// processes stored webhooks, and writes back.
    pub async fn tick(&self, send_batch: i64) -> StoreResult<TickReport> {
        let plan = self.scheduler.plan_pending().await?;
        if let Some(sim) = &self.simulator {
            for wh in sim.take_webhooks() {
                self.inbound.receive(&wh.body).await?;
            }
        }
        // Sending, answering patients and writing back happen on one instance at a time (the
        // outbound lease; always this one on SQLite). The others ingest, store webhooks and plan.
        if !self.store.outbound_lease(OUTBOUND_LEASE).await? {
            return Ok(TickReport {
                plan,
                standby: true,
                ..TickReport::default()
            });
        }
        let send = self.sender.send_due(send_batch).await?;
        let inbound = self.inbound.process_pending().await?;
        let writeback = self.writeback.run_once().await?;
        let inbox = self.inbox.run_once().await?;
        Ok(TickReport {
            plan,
            send,
            inbound,
            writeback,
            inbox,
            standby: false,
        })
    }
}
