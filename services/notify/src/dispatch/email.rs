//! Email sends over SMTP: plain text, STARTTLS when the server offers it (or
//! as configured), the delivery id as the Message-ID so a resend after a
//! crash is recognisable as the same message.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::{Claimed, Outcome};
use crate::config::{SmtpConfig, SmtpTls};

#[derive(Clone)]
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailSender {
    pub fn new(config: &SmtpConfig, timeout: Duration) -> anyhow::Result<Self> {
        let mut parameters = TlsParameters::builder(config.host.clone());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!(
                    "{}: cannot read {}: {e}",
                    crate::config::SMTP_CA_FILE,
                    path.display()
                )
            })?;
            parameters = parameters.add_root_certificate(Certificate::from_pem(&pem)?);
        }
        let parameters = parameters.build()?;
        let tls = match config.tls {
            SmtpTls::Opportunistic => Tls::Opportunistic(parameters),
            SmtpTls::Required => Tls::Required(parameters),
            SmtpTls::Wrapper => Tls::Wrapper(parameters),
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
                .port(config.port)
                .tls(tls)
                .timeout(Some(timeout));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from: config.from.parse()?,
        })
    }

    #[tracing::instrument(skip_all, fields(delivery_id = %delivery.id, attempt = delivery.attempts))]
    pub async fn send(&self, delivery: &Claimed) -> Outcome {
        let message = match self.message(delivery) {
            Ok(message) => message,
            Err(error) => {
                return Outcome::Permanent {
                    status: None,
                    error,
                };
            }
        };
        match self.transport.send(message).await {
            Ok(response) => Outcome::Delivered {
                status: Some(u16::from(response.code())),
            },
            Err(error) => {
                let status = error.status().map(u16::from);
                let error_text = format!("smtp: {error}");
                if error.is_permanent() {
                    Outcome::Permanent {
                        status,
                        error: error_text,
                    }
                } else {
                    Outcome::Retry {
                        status,
                        error: error_text,
                        retry_after: None,
                    }
                }
            }
        }
    }

    fn message(&self, delivery: &Claimed) -> Result<Message, String> {
        #[derive(serde::Deserialize)]
        struct Body {
            subject: String,
            text: String,
        }
        let body: Body = serde_json::from_str(&delivery.body)
            .map_err(|e| format!("stored email body is unreadable: {e}"))?;
        let to: Mailbox = delivery
            .recipient
            .parse()
            .map_err(|e| format!("recipient {:?} is not an address: {e}", delivery.recipient))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(body.subject)
            .message_id(Some(format!("<{}@dealmesh>", delivery.id)))
            .header(ContentType::TEXT_PLAIN)
            .body(body.text)
            .map_err(|e| format!("cannot build the message: {e}"))
    }
}
