//! Wiring of the FHIR connector: its options, the sink that commits notifications before they are
//! answered, Bundle files, REST polling, and the Subscription endpoints `medrelay run` serves.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use jiff::Timestamp;
use medrelay_connector_fhir::server::FhirServer;
use medrelay_connector_fhir::subscription::{
    BundleSink, ResourceFetcher, SubscriptionState, router,
};
use medrelay_connector_fhir::{
    ConsentSelector, FhirOptions, Issue, MappedBundle, id_only_without_server, map_bundle,
};
use medrelay_listener::serve_bounded_tls;
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::ingest::{AcceptReceipt, Ingest, Rejected};
use medrelay_pipeline::service::Service;
use medrelay_pipeline::store::subscriptions::FHIR_GAP_ALERT;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::{FhirConnectorConfig, FhirSubscriptionConfig, Loaded};
use crate::wiring::secret_from_env;

/// The connector's mapping options.
pub fn options(loaded: &Loaded, c: &FhirConnectorConfig) -> FhirOptions {
    let site = &loaded.compiled.sites[&c.site];
    FhirOptions {
        system: c.system().to_string(),
        site: site.name.clone(),
        time_zone: site.time_zone.clone(),
        default_region: site.default_region.clone(),
        identifier_system: c.identifier_system.clone(),
        consent: ConsentSelector {
            codes: c.consent_codes.clone(),
        },
    }
}

/// The quarantine rows of a mapped Bundle (and of a body that is not one).
fn quarantined(
    mapped: &MappedBundle,
    whole: Option<(&Issue, &[u8])>,
    origin: &str,
) -> Vec<Rejected> {
    let mut out: Vec<Rejected> = mapped
        .rejected
        .iter()
        .map(|r| Rejected {
            location: format!("{origin} {}", r.location),
            column: r.issue.expression.clone(),
            reason: r.issue.to_string(),
            raw: r.raw.clone(),
            filler_id: r.filler_id.clone(),
        })
        .collect();
    if let Some((issue, raw)) = whole {
        out.push(Rejected {
            location: origin.to_string(),
            column: issue.expression.clone(),
            reason: issue.to_string(),
            raw: raw.to_vec(),
            filler_id: None,
        });
    }
    out
}

/// Commits a mapped Bundle in one transaction: its changes (full appointments and status changes
/// of appointments without a start, in entry order) and its quarantined entries.
async fn commit(
    ingest: &Ingest,
    feed: &str,
    now: Timestamp,
    mapped: &MappedBundle,
    whole: Option<(&Issue, &[u8])>,
    origin: &str,
) -> Result<AcceptReceipt, String> {
    let rejected = quarantined(mapped, whole, origin);
    if mapped.events.is_empty() && rejected.is_empty() {
        return Ok(AcceptReceipt::default());
    }
    ingest
        .accept_changes(None, feed, now, &mapped.events, &rejected, false)
        .await
        .map_err(|e| e.to_string())
}

/// Commits what the Subscription endpoint received, then wakes the service loop to plan it.
pub struct IngestBundleSink {
    pub ingest: Ingest,
    pub feed: String,
    pub clock: Arc<dyn Clock>,
    pub woken: Arc<Notify>,
    /// For the Subscription's progress and its gap alerts.
    pub store: medrelay_pipeline::store::Store,
    /// Whether the connector has a `[connectors.server]` to re-read missed events from.
    pub can_search: bool,
}

#[async_trait::async_trait]
impl BundleSink for IngestBundleSink {
    async fn store(
        &self,
        mapped: &MappedBundle,
        whole: Option<(&Issue, &[u8])>,
    ) -> Result<(), String> {
        commit(
            &self.ingest,
            &self.feed,
            self.clock.now(),
            mapped,
            whole,
            "subscription",
        )
        .await?;
        self.woken.notify_one();
        Ok(())
    }

    /// Records the Subscription as alive (feed activity: heartbeats count) and its event
    /// counter; events the counter shows missing raise one `fhir_subscription_gap` per
    /// Subscription, resolved by the next full search of the server (`poll`).
    async fn heard(
        &self,
        status: &medrelay_connector_fhir::map::NotificationStatus,
    ) -> Result<(), String> {
        let now = self.clock.now();
        let subscription = status.subscription.as_deref().unwrap_or("(unnamed)");
        // A reference is an id, not patient data; cut it so a hostile value stays short.
        let subscription: String = subscription.chars().take(120).collect();
        let gap = self
            .store
            .subscription_heard(
                &self.feed,
                &subscription,
                &status.event_numbers,
                status.events_since_start,
                now,
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(g) = gap {
            let key = format!("feed {} subscription {subscription}:", self.feed);
            let remedy = if self.can_search {
                "the next search of the server ([connectors.server] poll) reads them again"
            } else {
                "re-read them with `medrelay ingest fhir --server` or have the EHR resend them"
            };
            warn!(feed = %self.feed, first = g.first, last = g.last, "FHIR subscription events missing");
            self.store
                .raise_incident(
                    FHIR_GAP_ALERT,
                    &key,
                    &format!(
                        "{key} events {} to {} never arrived ({} missing); {remedy}",
                        g.first,
                        g.last,
                        g.last - g.first + 1
                    ),
                    now,
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The Subscription's `Authorization` value from `subscription.authorization_env`; a variable that
/// is unset, empty or blank is a usage error naming it (never its value): the endpoint fails
/// closed instead of accepting requests without the header.
fn subscription_authorization(
    c: &FhirConnectorConfig,
    sub: &FhirSubscriptionConfig,
) -> anyhow::Result<String> {
    secret_from_env(
        &sub.authorization_env,
        &format!(
            "the Subscription's Authorization header (connector `{}` subscription.authorization_env)",
            c.name
        ),
    )
}

/// The server's `Authorization` value, when `server.authorization_env` names one; unset, empty or
/// blank is a usage error naming the variable (no request goes out with an empty credential).
fn server_authorization(c: &FhirConnectorConfig) -> anyhow::Result<Option<String>> {
    let Some(var) = c.server.as_ref().and_then(|s| s.authorization_env.as_ref()) else {
        return Ok(None);
    };
    secret_from_env(
        var,
        &format!(
            "the FHIR server's Authorization header (connector `{}` server.authorization_env)",
            c.name
        ),
    )
    .map(Some)
}

/// Checks every FHIR secret `medrelay run` will use before anything starts: the Subscription
/// values when `serving` (endpoints are served) and the server values always (polling, id-only
/// reads, write-back).
pub fn require_secrets(loaded: &Loaded, serving: bool) -> anyhow::Result<()> {
    for c in &loaded.config.connectors {
        let crate::config::ConnectorConfig::Fhir(c) = c else {
            continue;
        };
        if serving && let Some(sub) = &c.subscription {
            subscription_authorization(c, sub)?;
        }
        server_authorization(c)?;
    }
    Ok(())
}

/// The connector's FHIR server client, when `[connectors.server]` is set.
pub fn server(loaded: &Loaded, c: &FhirConnectorConfig) -> anyhow::Result<Option<FhirServer>> {
    let Some(s) = &c.server else { return Ok(None) };
    let auth = server_authorization(c)?;
    let timeout = Duration::from_secs(s.timeout_secs);
    let server = FhirServer::new(&s.base_url, auth.as_deref(), timeout)
        .map_err(|e| anyhow!("connector `{}`: {e}", c.name))?;
    Ok(Some(match &s.smart {
        Some(smart) => server.with_smart(
            loaded
                .smart_auth(&c.name, smart, timeout)
                .map_err(|e| anyhow!("connector `{}`: {e}", c.name))?,
        ),
        None => server,
    }))
}

/// Binds every FHIR connector's Subscription endpoint and serves it.
pub async fn start_endpoints(
    service: &Service,
    loaded: &Loaded,
    clock: Arc<dyn Clock>,
    woken: Arc<Notify>,
) -> anyhow::Result<Vec<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)>> {
    let mut out = Vec::new();
    for c in &loaded.config.connectors {
        let crate::config::ConnectorConfig::Fhir(c) = c else {
            continue;
        };
        let Some(sub) = &c.subscription else { continue };
        let authorization = subscription_authorization(c, sub)?;
        let addr: SocketAddr = sub.listen.parse().context("subscription.listen")?;
        let fetcher = server(loaded, c)?.map(|s| Arc::new(s) as Arc<dyn ResourceFetcher>);
        let now_clock = clock.clone();
        let state = SubscriptionState {
            feed: c.name.clone(),
            opts: Arc::new(options(loaded, c)),
            sink: Arc::new(IngestBundleSink {
                ingest: service.ingest.clone(),
                store: service.store.clone(),
                feed: c.name.clone(),
                clock: clock.clone(),
                woken: woken.clone(),
                can_search: c.server.is_some(),
            }),
            fetcher,
            authorization: Arc::from(authorization.as_str()),
            now: Arc::new(move || now_clock.now()),
            limits: sub.request_limits(),
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (connector `{}`)", c.name))?;
        let local = listener.local_addr()?;
        info!(connector = %c.name, address = %local, path = %sub.path, "FHIR subscription endpoint listening");
        let app = router(state, &sub.path).map_err(|e| anyhow!("connector `{}`: {e}", c.name))?;
        let app = service
            .instruments
            .timed(app, format!("fhir_subscription:{}", c.name));
        // Stopped by aborting the task (see `run`): the sender delivers again what was not
        // answered.
        let limits = sub.connection_limits();
        let tls = match &sub.tls {
            Some(files) => Some(
                loaded
                    .server_tls(files)
                    .with_context(|| format!("connector `{}`: subscription.tls", c.name))?,
            ),
            None => None,
        };
        out.push((
            local,
            tokio::spawn(serve_bounded_tls(
                listener,
                app,
                limits,
                tls,
                std::future::pending(),
            )),
        ));
    }
    Ok(out)
}

/// The result of importing one Bundle (a file, or a server search).
#[derive(Clone, Debug)]
pub struct FhirImportResult {
    pub origin: String,
    pub appointments: usize,
    pub receipt: AcceptReceipt,
    /// One line per rejected entry (location and issue; no values).
    pub rejected: Vec<String>,
}

async fn import_bytes(
    service: &Service,
    loaded: &Loaded,
    c: &FhirConnectorConfig,
    bytes: &[u8],
    origin: &str,
    now: Timestamp,
) -> anyhow::Result<FhirImportResult> {
    let opts = options(loaded, c);
    let (mut mapped, mut whole) = match map_bundle(bytes, &opts, now) {
        Ok(m) => (m, None),
        Err(issue) => (MappedBundle::default(), Some(issue)),
    };
    // An id-only notification saved to a file: read what it points at, as the Subscription
    // endpoint does; without a server it is refused in the endpoint's words (there a 422) and the
    // file is quarantined, never reported as "0 imported".
    let references = mapped.id_only_references();
    if !references.is_empty() {
        match server(loaded, c)? {
            Some(server) => {
                let fetched = ResourceFetcher::fetch(&server, &references)
                    .await
                    .map_err(|e| {
                        anyhow!("{origin}: the notified resources could not be read: {e}")
                    })?;
                let read = map_bundle(&fetched, &opts, now).map_err(|issue| {
                    anyhow!("{origin}: the server's answer is not a Bundle: {issue}")
                })?;
                mapped.events = read.events;
                mapped.rejected = read.rejected;
                mapped.r5 = read.r5;
            }
            None => whole = Some(id_only_without_server()),
        }
    }
    let receipt = commit(
        &service.ingest,
        &c.name,
        now,
        &mapped,
        whole.as_ref().map(|i| (i, bytes)),
        origin,
    )
    .await
    .map_err(|e| anyhow!("{origin}: not imported: {e}"))?;
    let mut rejected: Vec<String> = mapped
        .rejected
        .iter()
        .map(|r| format!("{}: {}", r.location, r.issue))
        .collect();
    rejected.extend(whole.map(|i| format!("the input: {i}")));
    Ok(FhirImportResult {
        origin: origin.to_string(),
        appointments: mapped.events.len(),
        receipt,
        rejected,
    })
}

/// Imports one Bundle file (searchset, collection, transaction or notification).
pub async fn import_file(
    service: &Service,
    loaded: &Loaded,
    c: &FhirConnectorConfig,
    path: &Path,
    now: Timestamp,
) -> anyhow::Result<FhirImportResult> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = crate::wiring::input_name(path);
    import_bytes(service, loaded, c, &bytes, &name, now).await
}

/// Searches the connector's server for appointments from now to now + window and imports them.
pub async fn poll(
    service: &Service,
    loaded: &Loaded,
    c: &FhirConnectorConfig,
    now: Timestamp,
) -> anyhow::Result<FhirImportResult> {
    let server =
        server(loaded, c)?.ok_or_else(|| anyhow!("connector `{}` has no [server]", c.name))?;
    let window = c
        .server
        .as_ref()
        .and_then(|s| medrelay_mapping::plan::parse_duration(&s.window))
        .unwrap_or(jiff::SignedDuration::from_hours(24 * 14));
    let pages = server
        .appointments_between(now, now + window)
        .await
        .map_err(|e| anyhow!("connector `{}`: search failed: {e}", c.name))?;
    // Each page is mapped and committed on its own; the result adds them up.
    let mut total = FhirImportResult {
        origin: "server search".to_string(),
        appointments: 0,
        receipt: AcceptReceipt::default(),
        rejected: Vec::new(),
    };
    for (n, page) in pages.iter().enumerate() {
        let r = import_bytes(
            service,
            loaded,
            c,
            page,
            &format!("server search page {}", n + 1),
            now,
        )
        .await?;
        total.appointments += r.appointments;
        total.receipt.applied += r.receipt.applied;
        total.receipt.unchanged += r.receipt.unchanged;
        total.receipt.older_ignored += r.receipt.older_ignored;
        total.receipt.unknown_ignored += r.receipt.unknown_ignored;
        total.receipt.quarantined += r.receipt.quarantined;
        total.rejected.extend(r.rejected);
    }
    // The server was read in full for the window: events a Subscription missed are in it.
    let resolved = service
        .store
        .resolve_incident(
            FHIR_GAP_ALERT,
            &format!("feed {} subscription", c.name),
            now,
        )
        .await?;
    if resolved > 0 {
        info!(connector = %c.name, "missed FHIR subscription events read from the server (alert resolved)");
    }
    Ok(total)
}
