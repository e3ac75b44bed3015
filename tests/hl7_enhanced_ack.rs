//! The enhanced acknowledgment mode over MLLP (HL7 v2.5 section 2.9.3): a sender that values MSH-15
//! (accept acknowledgment type) or MSH-16 (application acknowledgment type) gets the accept
//! acknowledgment (CA once the message is durable, CR for one we do not take) and then the
//! application acknowledgment (AA, or AE with ERR) as its own message, each only when its type (AL,
//! NE, ER, SU) asks for it; a sender in the original mode keeps getting its one ACK. The messages
//! are the sample clinic feed's, with MSH-15 / MSH-16 set; one connection carries them all, so a
//! frame too many or too few shows up as the wrong answer to the next message.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The sample feed's messages, by MSH-10.
fn sample(control: &str) -> String {
    let raw = std::fs::read_to_string(common::root().join("samples/hl7/clinica_siu.hl7")).unwrap();
    let mut current: Option<String> = None;
    let mut found = Vec::new();
    for line in raw.replace("\r\n", "\n").replace('\n', "\r").split('\r') {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with("MSH") {
            found.extend(current.take());
            current = Some(String::new());
        }
        if let Some(m) = current.as_mut() {
            m.push_str(line);
            m.push('\r');
        }
    }
    found.extend(current);
    found
        .into_iter()
        .find(|m| m.split('|').nth(9) == Some(control))
        .unwrap_or_else(|| panic!("no {control} in the sample"))
}

/// `message` with MSH-15 and MSH-16 set.
fn enhanced(message: &str, accept: &str, application: &str) -> String {
    let from = "|2.5.1||||||UNICODE UTF-8";
    assert!(message.contains(from), "{message}");
    message.replacen(
        from,
        &format!("|2.5.1|||{accept}|{application}||UNICODE UTF-8"),
        1,
    )
}

/// Reads one MLLP frame (VT ... FS CR) and returns its content.
async fn frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
            let start = buf.iter().position(|&b| b == 0x0b).map_or(0, |p| p + 1);
            let text = String::from_utf8_lossy(&buf[start..end]).into_owned();
            buf.drain(..end + 2);
            return text;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut chunk))
            .await
            .expect("an answer frame")
            .unwrap();
        assert!(n > 0, "the listener closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An expected answer frame: "MSA-1 MSA-2", "MSH-15/MSH-16", ERR-3.1.
type Frame = (&'static str, &'static str, &'static str);

/// MSA-1 and MSA-2, MSH-15 and MSH-16, and ERR-3.1 of an acknowledgment.
fn summary(ack: &str) -> (String, String, String) {
    let seg = |name: &str| {
        ack.split('\r')
            .find(|s| s.starts_with(name))
            .unwrap_or("")
            .split('|')
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (msh, msa, err) = (seg("MSH"), seg("MSA"), seg("ERR"));
    let f = |v: &Vec<String>, i: usize| v.get(i).cloned().unwrap_or_default();
    (
        format!("{} {}", f(&msa, 1), f(&msa, 2)),
        format!("{}/{}", f(&msh, 14), f(&msh, 15)),
        f(&err, 3).split('^').next().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_mode_answers_exactly_the_acknowledgments_msh_15_and_16_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let site = common::MllpSite::start(dir.path(), "").await;
    let mut s = TcpStream::connect(site.addr()).await.unwrap();
    let mut buf = Vec::new();
    let mut send = async |message: String| {
        s.write_all(format!("\x0b{message}\x1c\r").as_bytes())
            .await
            .unwrap();
    };
    let not_siu =
        enhanced(&sample("CLI-0003"), "ER", "AL").replacen("SIU^S12^SIU_S12", "ADT^A01^ADT_A01", 1);
    // (message, the frames it must get: MSA, MSH-15/16, ERR-3.1).
    let cases: Vec<(String, Vec<Frame>)> = vec![
        (
            enhanced(&sample("CLI-0001"), "AL", "AL"),
            vec![("CA CLI-0001", "/", ""), ("AA CLI-0001", "NE/NE", "")],
        ),
        (
            enhanced(&sample("CLI-0005"), "AL", "AL"),
            vec![("CA CLI-0005", "/", ""), ("AE CLI-0005", "NE/NE", "101")],
        ),
        // Not a message type we take: commit reject; no application answer follows.
        (not_siu, vec![("CR CLI-0003", "/", "200")]),
        (
            enhanced(&sample("CLI-0002"), "NE", "AL"),
            vec![("AA CLI-0002", "NE/NE", "")],
        ),
        (
            enhanced(&sample("CLI-0003"), "AL", "NE"),
            vec![("CA CLI-0003", "/", "")],
        ),
        // Nothing asked for: no frame at all (the next message's answer comes next).
        (enhanced(&sample("CLI-0004"), "NE", "NE"), vec![]),
        // Errors only, and it succeeded: nothing either.
        (enhanced(&sample("CLI-0006"), "ER", "ER"), vec![]),
        // The original mode on the same connection: its one ACK.
        (sample("CLI-0001"), vec![("AA CLI-0001", "/", "")]),
        // Success only: the accept acknowledgment; the AE is an error, so it is not sent.
        (
            enhanced(&sample("CLI-0005"), "SU", "SU"),
            vec![("CA CLI-0005", "/", "")],
        ),
    ];
    let mut expected_frames = Vec::new();
    for (message, frames) in &cases {
        send(message.clone()).await;
        expected_frames.extend(frames.iter().copied());
    }
    // A last original-mode message closes the sequence: its ACK must be the last frame.
    send(sample("CLI-0002")).await;
    expected_frames.push(("AA CLI-0002", "/", ""));
    for (i, want) in expected_frames.iter().enumerate() {
        let got = summary(&frame(&mut s, &mut buf).await);
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2.as_str()),
            *want,
            "frame {i}"
        );
    }
    // Stored as in the original mode: the CA was given after the commit.
    let id = site
        .store
        .find_appointment("clinica/AG-30007")
        .await
        .unwrap()
        .expect("CLI-0001 is stored");
    assert!(site.store.load_appointment(id).await.unwrap().is_some());
    site.stop().await;
}
