//! `medrelay bench mllp`: HL7 SIU messages over a real MLLP connection into a fresh SQLite store,
//! each committed (its own transaction, fsync) before its ACK, one message in flight at a time as
//! an interface engine sends them (`--connections N`: N such senders at once). Reports messages/s and ACK latency percentiles; `--parse-only`
//! times decoding and mapping alone.
//!
//! `medrelay bench fhir`: one collection Bundle of N Appointments with their Patients and Consents
//! (the sample notification's shape), mapped entry by entry, then committed in one transaction.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use medrelay_pipeline::clock::SystemClock;

use crate::wiring::{build_service, open_store};
use crate::{Output, exit};

/// Arguments of `medrelay bench mllp`.
#[derive(Debug, Args)]
pub struct MllpBenchArgs {
    /// Number of messages.
    #[arg(long, default_value_t = 5_000)]
    pub messages: u64,
    /// Only decode, parse and map (no network, no database).
    #[arg(long)]
    pub parse_only: bool,
    /// Concurrent MLLP connections, each sending its share one message at a time (the way
    /// several interface-engine channels feed one listener).
    #[arg(long, default_value_t = 1)]
    pub connections: u64,
}

/// The i-th synthetic SIU^S12 (v2.5.1, the sample clinic's shape, with PD1).
fn message(i: u64) -> String {
    let day = 2 + (i % 25);
    let hour = 8 + (i % 9);
    format!(
        "MSH|^~\\&|AGENDA|CLINICA-SP|MEDRELAY|CLINICA-SP|20261201{hh:02}{mm:02}00-0300||SIU^S12^SIU_S12|BENCH-{i}|P|2.5.1||||||UNICODE UTF-8\r\
         SCH|PL-{i}|BENCH-AG-{i}||||ROTINA|Consulta^Consulta|NORMAL|30|MIN|^^^202612{day:02}{hour:02}00-0300^202612{day:02}{hour:02}30-0300||||||||||||||Booked\r\
         PID|1||P-{pid}^^^CLINICA^MR||Exemplo^Jo\u{e3}o^^^^^L||19800101|M|||||^PRN^CP^^55^11^9{phone:08}||por\r\
         PD1|||||||||||F^Family only^HL70215|N\r\
         RGS|1\r\
         AIS|1||CONS^Consulta^L\r\
         AIL|1||PAU1^^^Cl\u{ed}nica S\u{e3}o Paulo \u{2013} Unidade Paulista\r\
         AIP|1||7001^Fict\u{ed}cia^Ana^^^Dra.\r",
        hh = 8 + (i / 3600) % 10,
        mm = (i / 60) % 60,
        pid = 100_000 + i % 50_000,
        phone = 10_000_000 + i % 50_000,
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs the benchmark.
pub async fn run(args: MllpBenchArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let config = super::init::STARTER_CONFIG
        .replace("# listen = \"0.0.0.0:2575\"", "listen = \"127.0.0.1:0\"");
    let (_dir, loaded) = super::bench::bench_setup(&super::bench::bench_config(&config).await?)?;
    let messages: Vec<String> = (0..args.messages).map(message).collect();
    let bytes: usize = messages.iter().map(String::len).sum();
    if args.parse_only {
        let c = loaded.hl7_connector(None).map_err(anyhow::Error::msg)?;
        let opts = crate::hl7::options(&loaded, c);
        let t = Instant::now();
        let mut ok = 0u64;
        for (i, m) in messages.iter().enumerate() {
            let arrival = medrelay_connector_hl7v2::Arrival::new(jiff::Timestamp::now(), i as i64);
            let p = medrelay_connector_hl7v2::process(m.as_bytes(), &opts, arrival, "bench");
            ok += matches!(p.outcome, medrelay_connector_hl7v2::Outcome::Event(_)) as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        o.line(format!(
            "decoded, parsed and mapped {ok} of {} SIU messages ({:.1} KiB) in {secs:.3} s ({:.0} msg/s), no network, no database",
            args.messages,
            bytes as f64 / 1024.0,
            args.messages as f64 / secs
        ));
        return Ok(exit::OK);
    }
    let store = open_store(&loaded).await?;
    let clock: Arc<dyn medrelay_pipeline::clock::Clock> = Arc::new(SystemClock);
    let service = build_service(&loaded, store.clone(), clock.clone())?;
    let listeners = crate::hl7::start_listeners(
        &service,
        &loaded,
        clock,
        Arc::new(tokio::sync::Notify::new()),
    )
    .await?;
    let connections = args.connections.max(1);
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); connections as usize];
    for (i, m) in messages.into_iter().enumerate() {
        shares[i % connections as usize].push(m);
    }
    let mut streams = Vec::new();
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(listeners[0].0).await?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let t = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for (mut stream, share) in streams.into_iter().zip(shares) {
        senders.spawn(async move {
            let mut latencies = Vec::with_capacity(share.len());
            let mut accepted = 0u64;
            for m in &share {
                let sent = Instant::now();
                let reply =
                    medrelay_connector_hl7v2::mllp::exchange(&mut stream, m.as_bytes()).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                accepted += reply.windows(7).any(|w| w == b"\rMSA|AA") as u64;
            }
            anyhow::Ok((latencies, accepted))
        });
    }
    let mut latencies = Vec::with_capacity(args.messages as usize);
    let mut accepted = 0u64;
    while let Some(done) = senders.join_next().await {
        let (l, a) = done??;
        latencies.extend(l);
        accepted += a;
    }
    let secs = t.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let result = serde_json::json!({
        "messages": args.messages, "connections": connections, "accepted": accepted, "seconds": secs,
        "messages_per_second": args.messages as f64 / secs,
        "ack_ms_p50": percentile(&latencies, 0.5), "ack_ms_p99": percentile(&latencies, 0.99),
        "ack_ms_max": latencies.last().copied().unwrap_or(f64::NAN),
        "peak_rss_mib": super::bench::peak_rss_mib(),
    });
    o.line(format!(
        "{} SIU messages over {connections} MLLP connection(s), each committed before its ACK: {accepted} AA in {secs:.2} s ({:.0} msg/s); ACK latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; peak RSS {:.1} MiB",
        args.messages,
        args.messages as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        super::bench::peak_rss_mib().unwrap_or(f64::NAN)
    ));
    if o.json {
        o.json(&result);
    }
    for (_, h) in &listeners {
        h.abort();
    }
    store.close().await;
    Ok(exit::OK)
}

/// Arguments of `medrelay bench fhir`.
#[derive(Debug, Args)]
pub struct FhirBenchArgs {
    /// Number of Appointments (each with its Patient and a Consent).
    #[arg(long, default_value_t = 10_000)]
    pub appointments: u64,
}

fn fhir_bundle(n: u64) -> Vec<u8> {
    // Entries are serialized one at a time, so the generator's own memory stays small.
    let mut out = String::from(r#"{"resourceType":"Bundle","type":"collection","entry":["#);
    for i in 0..n {
        let mut entries = Vec::with_capacity(3);
        let day = 2 + (i % 25);
        let hour = 11 + (i % 9);
        entries.push(serde_json::json!({"fullUrl": format!("urn:uuid:a-{i}"), "resource": {
            "resourceType": "Appointment", "id": format!("a-{i}"),
            "meta": {"versionId": "1", "lastUpdated": "2026-12-01T13:00:00Z"},
            "identifier": [{"system": "urn:clinica:agenda", "value": format!("BENCH-FHIR-{i}")}],
            "status": "booked",
            "serviceType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/service-type", "code": "124", "display": "General Practice"}]}],
            "start": format!("2026-12-{day:02}T{hour:02}:00:00Z"), "end": format!("2026-12-{day:02}T{hour:02}:30:00Z"),
            "participant": [
                {"actor": {"reference": format!("Patient/p-{i}")}, "status": "accepted"},
                {"actor": {"reference": "Practitioner/pr-1", "display": "Dra. Ana Fict\u{ed}cia"}, "status": "accepted"},
                {"actor": {"reference": "Location/loc-1", "display": "Cl\u{ed}nica Paulista"}, "status": "accepted"}]}}));
        entries.push(serde_json::json!({"fullUrl": format!("urn:uuid:p-{i}"), "resource": {
            "resourceType": "Patient", "id": format!("p-{i}"),
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}, "value": format!("P-{i}")}],
            "name": [{"use": "official", "family": "Exemplo", "given": ["Jo\u{e3}o"]}],
            "telecom": [{"system": "phone", "value": format!("11 9{:08}", 10_000_000 + i % 50_000), "use": "mobile"}]}}));
        entries.push(serde_json::json!({"fullUrl": format!("urn:uuid:c-{i}"), "resource": {
            "resourceType": "Consent", "id": format!("c-{i}"), "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/p-{i}")}, "dateTime": "2026-11-30T10:00:00Z",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": {"type": "permit"}}}));
        for e in entries {
            if !out.ends_with('[') {
                out.push(',');
            }
            out.push_str(&e.to_string());
        }
    }
    out.push_str("]}");
    out.into_bytes()
}

/// Runs `bench fhir`.
pub async fn run_fhir(args: FhirBenchArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let (dir, loaded) = super::bench::bench_setup(super::init::STARTER_CONFIG)?;
    let c = loaded.fhir_connector(None).map_err(anyhow::Error::msg)?;
    let bundle = fhir_bundle(args.appointments);
    let file = dir.path().join("bench.json");
    std::fs::write(&file, &bundle)?;
    let rss_before = super::bench::peak_rss_mib().unwrap_or(f64::NAN);
    let t = Instant::now();
    let mapped = medrelay_connector_fhir::map_bundle(
        &bundle,
        &crate::fhir::options(&loaded, c),
        jiff::Timestamp::now(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let map_secs = t.elapsed().as_secs_f64();
    let store = open_store(&loaded).await?;
    let service = build_service(&loaded, store.clone(), Arc::new(SystemClock))?;
    let t = Instant::now();
    let r = crate::fhir::import_file(&service, &loaded, c, &file, jiff::Timestamp::now()).await?;
    let import_secs = t.elapsed().as_secs_f64();
    o.line(format!(
        "FHIR Bundle of {} Appointments + Patients + Consents ({:.1} MiB): mapped in {map_secs:.2} s ({:.0} appointments/s, {} opted in); read, mapped and committed in {import_secs:.2} s ({:.0} appointments/s); peak RSS {:.1} MiB ({rss_before:.1} MiB before mapping)",
        args.appointments,
        bundle.len() as f64 / 1048576.0,
        args.appointments as f64 / map_secs,
        mapped.events.iter().filter(|e| e.as_event().is_some_and(|e| e.appointment.ehr_consent.is_some())).count(),
        r.appointments as f64 / import_secs,
        super::bench::peak_rss_mib().unwrap_or(f64::NAN)
    ));
    store.close().await;
    Ok(exit::OK)
}
