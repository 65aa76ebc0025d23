//! Email through a real SMTP server (aiosmtpd, run locally): what it
//! received, and the daily digest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use dealmesh_auth::Role;
use dealmesh_proto::v1::{self as pb, NotificationTrigger as T};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// The test tools' Python: `DEALMESH_PYTHON` (scripts/test sets it), else
/// the venv scripts/ensure-tools creates.
fn python() -> PathBuf {
    std::env::var_os("DEALMESH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/dealmesh/venv/bin/python")
        })
}

struct Smtp {
    port: u16,
    dir: tempfile::TempDir,
    /// With STARTTLS: the certificate clients must trust.
    cert: Option<PathBuf>,
    _child: Child,
}

impl Smtp {
    async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A server that offers STARTTLS with a fresh self-signed certificate
    /// for 127.0.0.1.
    async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_capture.py");
        let mut command = Command::new(python());
        command
            .arg(script)
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg(&mail);
        let cert = if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let made = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stderr(Stdio::null())
                .status()
                .await
                .expect("openssl makes a test certificate");
            assert!(made.success());
            command.arg(&cert).arg(&key);
            Some(cert)
        } else {
            None
        };
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python with aiosmtpd (run scripts/ensure-tools)");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next_line().await.unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
        Self {
            port,
            dir,
            cert,
            _child: child,
        }
    }

    /// Messages received so far, in order, as raw RFC 5322 text.
    fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    /// The envelope of message `n` (0-based), with whether it came over TLS.
    fn envelope(&self, n: usize) -> serde_json::Value {
        let path = self
            .dir
            .path()
            .join("mail")
            .join(format!("{:04}.json", n + 1));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    async fn wait_for(&self, n: usize) -> Vec<String> {
        wait_for(&format!("{n} email(s)"), || async {
            self.messages().len() >= n
        })
        .await;
        self.messages()
    }
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

fn body(message: &str) -> String {
    message
        .split_once("\r\n\r\n")
        .or_else(|| message.split_once("\n\n"))
        .map(|(_, b)| b.replace("\r\n", "\n"))
        .unwrap_or_default()
}

fn email_subscription(address: &str, triggers: &[T], digest: bool) -> pb::Subscription {
    pb::Subscription {
        name: "mail".into(),
        triggers: triggers.iter().map(|t| *t as i32).collect(),
        filter: Some(pb::NotificationFilter {
            owned_deals_only: true,
            ..Default::default()
        }),
        channel: Some(pb::subscription::Channel::Email(pb::EmailChannel {
            address: address.into(),
            digest,
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deal_owner_gets_plain_text_email_for_stage_changes_and_notes_on_their_deals() {
    let smtp = Smtp::start().await;
    let port = smtp.port.to_string();
    let notify = TestNotify::start_with(&[
        ("DEALMESH_NOTIFY_SMTP_HOST", "127.0.0.1"),
        ("DEALMESH_NOTIFY_SMTP_PORT", &port),
        (
            "DEALMESH_NOTIFY_SMTP_FROM",
            "dealmesh <notify@dealmesh.test>",
        ),
    ])
    .await;
    let (id, _) = subscribe(
        &notify,
        email_subscription("alice@fund.test", &[T::StageChanged, T::NoteAdded], false),
        "alice",
        Role::Partner,
    )
    .await;
    let mine = new_deal_id();
    let other = new_deal_id();
    for e in [
        sourced(&mine, "Acme"),
        owner_assigned(&mine, "alice"),
        sourced(&other, "Other"),
        owner_assigned(&other, "bob"),
        stage_changed(&other, "new", "diligence"), // bob's deal: not for alice
        stage_changed(&mine, "new", "diligence"),
        note_added(&mine, "Founders are strong.\nFollow up on churn."),
    ] {
        notify.publish(&e).await;
    }
    let messages = smtp.wait_for(2).await;
    wait_for("deliveries marked", || async {
        let d = notify.deliveries(&id).await;
        d.len() == 2 && d.iter().all(|d| d.0 == "delivered")
    })
    .await;
    assert_eq!(messages.len(), 2, "only alice's deal");
    // One endpoint may carry several sends at once: find them by subject.
    let stage = messages
        .iter()
        .find(|m| header(m, "Subject").is_some_and(|s| s.contains("moved")))
        .expect("the stage change email");
    assert_eq!(
        header(stage, "Subject"),
        Some("[dealmesh] Acme moved from new to diligence")
    );
    assert_eq!(header(stage, "To"), Some("alice@fund.test"));
    assert!(header(stage, "Content-Type").is_some_and(|c| c.starts_with("text/plain")));
    assert!(header(stage, "Message-ID").is_some_and(|m| m.ends_with("@dealmesh>")));
    let note = messages
        .iter()
        .find(|m| header(m, "Subject").is_some_and(|s| s.contains("new note")))
        .map(|m| body(m))
        .expect("the note email");
    assert!(
        note.contains("Founders are strong.\nFollow up on churn."),
        "{note}"
    );
    assert!(note.contains("Deal: Acme ("), "{note}");
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_digest_subscriber_gets_one_email_with_everything_since_the_last() {
    let smtp = Smtp::start().await;
    let port = smtp.port.to_string();
    let notify = TestNotify::start_with(&[
        ("DEALMESH_NOTIFY_SMTP_HOST", "127.0.0.1"),
        ("DEALMESH_NOTIFY_SMTP_PORT", &port),
    ])
    .await;
    let (id, _) = subscribe(
        &notify,
        email_subscription("carol@fund.test", &[T::StageChanged, T::NoteAdded], true),
        "carol",
        Role::Partner,
    )
    .await;
    let deal = new_deal_id();
    let events = [
        sourced(&deal, "Digestco"),
        owner_assigned(&deal, "carol"),
        stage_changed(&deal, "new", "diligence"),
        note_added(&deal, "first note"),
        note_added(&deal, "second note"),
    ];
    for e in &events {
        notify.publish(e).await;
    }
    notify.applied(&events[4].event_id).await;
    let waiting = notify.deliveries(&id).await;
    assert_eq!(waiting.len(), 3);
    assert!(
        waiting.iter().all(|d| d.0 == "digest"),
        "held for the digest: {waiting:?}"
    );
    assert!(smtp.messages().is_empty());

    // The digest step, at a given time (the server runs it on its clock).
    let written = dealmesh_notify::digest::assemble(&notify.db.pool, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(written, 1);
    assert_eq!(
        dealmesh_notify::digest::assemble(&notify.db.pool, chrono::Utc::now())
            .await
            .unwrap(),
        0,
        "nothing is digested twice"
    );
    let messages = smtp.wait_for(1).await;
    let text = body(&messages[0]);
    assert_eq!(
        header(&messages[0], "Subject"),
        Some("[dealmesh] your digest: 3 notification(s)")
    );
    assert!(
        text.contains("Digestco moved from new to diligence"),
        "{text}"
    );
    assert!(
        text.contains("first note") && text.contains("second note"),
        "{text}"
    );
    assert!(
        notify
            .deliveries(&id)
            .await
            .iter()
            .all(|d| d.0 == "digested")
    );
    notify.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starttls_is_used_when_the_server_offers_it() {
    let smtp = Smtp::start_tls().await;
    let port = smtp.port.to_string();
    let ca = smtp.cert.clone().unwrap().display().to_string();
    let notify = TestNotify::start_with(&[
        ("DEALMESH_NOTIFY_SMTP_HOST", "127.0.0.1"),
        ("DEALMESH_NOTIFY_SMTP_PORT", &port),
        ("DEALMESH_NOTIFY_SMTP_CA_FILE", &ca),
    ])
    .await;
    let mut subscription = email_subscription("dave@fund.test", &[T::DealSourced], false);
    subscription.filter = None;
    subscribe(&notify, subscription, "dave", Role::Partner).await;
    notify.publish(&sourced(&new_deal_id(), "Tlsco")).await;
    let messages = smtp.wait_for(1).await;
    assert_eq!(
        header(&messages[0], "Subject"),
        Some("[dealmesh] Tlsco was sourced from scout")
    );
    let envelope = smtp.envelope(0);
    assert_eq!(
        envelope["tls"], true,
        "the message came over STARTTLS: {envelope}"
    );
    assert_eq!(envelope["rcpt_tos"], serde_json::json!(["dave@fund.test"]));
    notify.stop().await;
}
