//! The outside channels: signed webhooks, email over SMTP, SMS through the
//! provider webhook. (In-app delivery is a database write; the worker does
//! it in the transaction that records the delivery.)
//!
//! Each send is one attempt; the worker decides about retries. An error
//! says whether retrying can help (`permanent`) and why, in words without
//! addresses or message content.

use std::time::{Duration, SystemTime};

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message as Email};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use reqwest::StatusCode;

use crate::config::{NotificationsSettings, SmtpTls};
use crate::endpoint::Channel;
use crate::message::Message;
use crate::signing::SigningKey;

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct SendError {
    /// Whether another attempt cannot succeed (so the endpoint fails now).
    pub permanent: bool,
    /// Why, without addresses or content.
    pub reason: String,
}

impl SendError {
    /// A failure that a retry may fix.
    pub fn transient(reason: impl Into<String>) -> Self {
        Self { permanent: false, reason: reason.into() }
    }

    /// A failure no retry fixes.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self { permanent: true, reason: reason.into() }
    }
}

/// Why the channels could not be set up from the settings.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The HTTP client.
    #[error("cannot build the http client: {0}")]
    Http(#[from] reqwest::Error),
    /// The SMTP settings.
    #[error("invalid notifications.smtp settings: {0}; fix TANDEM_NOTIFICATIONS__SMTP__...")]
    Smtp(String),
    /// The SMS settings.
    #[error("invalid notifications.sms settings: {0}; fix TANDEM_NOTIFICATIONS__SMS__...")]
    Sms(String),
}

/// Where one delivery goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The channel.
    pub channel: Channel,
    /// The URL, email address or phone number.
    pub address: String,
    /// The webhook's signing secret.
    pub secret: String,
}

struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

struct SmsProvider {
    url: reqwest::Url,
    key: SigningKey,
    timeout: Duration,
}

/// The outside channels, set up once from the settings.
pub struct Channels {
    http: reqwest::Client,
    webhook_timeout: Duration,
    smtp: Option<Smtp>,
    sms: Option<SmsProvider>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("email", &self.smtp.is_some())
            .field("sms", &self.sms.is_some())
            .finish_non_exhaustive()
    }
}

/// What to set to turn a channel on, for FailedPrecondition and failures.
pub fn not_configured(channel: Channel) -> Option<&'static str> {
    match channel {
        Channel::Email => Some(
            "email delivery is not configured: set notifications.smtp.host (TANDEM_NOTIFICATIONS__SMTP__HOST) and \
             notifications.smtp.from",
        ),
        Channel::Sms => Some(
            "sms delivery is not configured: set notifications.sms.url (TANDEM_NOTIFICATIONS__SMS__URL) and \
             notifications.sms.secret",
        ),
        Channel::Webhook | Channel::InApp => None,
    }
}

impl Channels {
    /// The channels the settings describe; email and SMS stay off when unset.
    pub fn new(settings: &NotificationsSettings) -> Result<Self, SetupError> {
        let http = reqwest::Client::builder()
            // A webhook that redirects could send a crisis alert anywhere;
            // only the registered, verified URL receives it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Tandem-Notifications/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5).min(settings.webhook.timeout))
            .build()?;
        let smtp = if settings.smtp.configured() { Some(smtp(settings)?) } else { None };
        let sms = if settings.sms.configured() {
            let url = reqwest::Url::parse(settings.sms.url.trim())
                .map_err(|error| SetupError::Sms(format!("url is not a URL: {error}")))?;
            let key = SigningKey::from_secret(settings.sms.secret.trim())
                .map_err(|error| SetupError::Sms(format!("secret: {error}")))?;
            Some(SmsProvider { url, key, timeout: settings.sms.timeout })
        } else {
            None
        };
        Ok(Self { http, webhook_timeout: settings.webhook.timeout, smtp, sms })
    }

    /// Whether a channel can deliver at all.
    pub fn available(&self, channel: Channel) -> bool {
        match channel {
            Channel::Webhook | Channel::InApp => true,
            Channel::Email => self.smtp.is_some(),
            Channel::Sms => self.sms.is_some(),
        }
    }

    /// One attempt to deliver `message` to `target`. `delivery_id` is the
    /// stable id receivers de-duplicate on.
    pub async fn send(&self, target: &Target, delivery_id: &str, message: &Message) -> Result<(), SendError> {
        match target.channel {
            Channel::Webhook => {
                let key = SigningKey::from_secret(&target.secret)
                    .map_err(|_| SendError::permanent("the endpoint's signing secret is unreadable"))?;
                let url = reqwest::Url::parse(&target.address)
                    .map_err(|_| SendError::permanent("the endpoint's url is unreadable"))?;
                self.post_signed(url, &key, delivery_id, message.webhook_body(), self.webhook_timeout, "webhook").await
            }
            Channel::Sms => {
                let Some(sms) = &self.sms else {
                    return Err(SendError::permanent(not_configured(Channel::Sms).unwrap_or_default()));
                };
                let body = serde_json::json!({ "to": target.address, "body": message.text });
                let body = serde_json::to_vec(&body).unwrap_or_default();
                self.post_signed(sms.url.clone(), &sms.key, delivery_id, body, sms.timeout, "sms provider").await
            }
            Channel::Email => self.email(target, delivery_id, message).await,
            Channel::InApp => Err(SendError::permanent("in-app delivery is written by the worker, not sent")),
        }
    }

    async fn post_signed(
        &self,
        url: reqwest::Url,
        key: &SigningKey,
        delivery_id: &str,
        body: Vec<u8>,
        timeout: Duration,
        what: &str,
    ) -> Result<(), SendError> {
        let mut request = self.http.post(url).timeout(timeout).header("content-type", "application/json");
        for (name, value) in key.headers(delivery_id, SystemTime::now(), &body) {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(|error| {
            if error.is_timeout() {
                SendError::transient(format!("{what} did not answer within {}", humantime::format_duration(timeout)))
            } else if error.is_connect() {
                SendError::transient(format!("{what} unreachable: connection failed"))
            } else {
                SendError::transient(format!("{what} request failed: {}", error.without_url()))
            }
        })?;
        classify(response.status(), what)
    }

    async fn email(&self, target: &Target, delivery_id: &str, message: &Message) -> Result<(), SendError> {
        let Some(smtp) = &self.smtp else {
            return Err(SendError::permanent(not_configured(Channel::Email).unwrap_or_default()));
        };
        let to: Mailbox =
            target.address.parse().map_err(|_| SendError::permanent("the endpoint's email address is unreadable"))?;
        let email = Email::builder()
            .from(smtp.from.clone())
            .to(to)
            .subject(message.title.clone())
            // The same Message-ID on every retry lets mail systems drop duplicates.
            .message_id(Some(format!("<{delivery_id}@tandem.notifications>")))
            .header(ContentType::TEXT_PLAIN)
            .body(message.text.clone())
            .map_err(|error| SendError::permanent(format!("cannot build the email: {error}")))?;
        match smtp.transport.send(email).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_permanent() => Err(SendError::permanent(format!(
                "smtp server refused the message permanently ({})",
                error.status().map(|code| code.to_string()).unwrap_or_else(|| "5xx".to_owned())
            ))),
            Err(error) if error.is_timeout() => Err(SendError::transient("smtp server did not answer in time")),
            Err(error) if error.is_transient() => Err(SendError::transient(format!(
                "smtp server deferred the message ({})",
                error.status().map(|code| code.to_string()).unwrap_or_else(|| "4xx".to_owned())
            ))),
            // The server's own text may echo the address: say only what kind of failure.
            Err(error) if error.is_tls() => Err(SendError::transient("smtp tls handshake failed")),
            Err(error) if error.is_client() => Err(SendError::permanent("smtp client rejected the message")),
            Err(_) => Err(SendError::transient("smtp server unreachable or the connection failed")),
        }
    }
}

/// 2xx is accepted. A 4xx other than timeout, conflict, too-early and
/// rate-limit answers will not change on retry, so the endpoint fails at
/// once and a crisis alert moves on; everything else is retried.
pub fn classify(status: StatusCode, what: &str) -> Result<(), SendError> {
    if status.is_success() {
        return Ok(());
    }
    let retryable = matches!(status.as_u16(), 408 | 409 | 425 | 429);
    let reason = format!("{what} answered {}", status.as_u16());
    if status.is_client_error() && !retryable {
        return Err(SendError::permanent(reason));
    }
    Err(SendError::transient(reason))
}

fn smtp(settings: &NotificationsSettings) -> Result<Smtp, SetupError> {
    let smtp = &settings.smtp;
    let host = smtp.host.trim().to_owned();
    let from: Mailbox = smtp.from.parse().map_err(|_| {
        SetupError::Smtp(format!("from `{}` is not a mailbox like `Tandem <alerts@clinic.example>`", smtp.from))
    })?;
    let tls_parameters =
        || TlsParameters::new(host.clone()).map_err(|error| SetupError::Smtp(format!("tls for host {host}: {error}")));
    let tls = match smtp.tls {
        SmtpTls::Starttls => Tls::Required(tls_parameters()?),
        SmtpTls::Opportunistic => Tls::Opportunistic(tls_parameters()?),
        SmtpTls::Tls => Tls::Wrapper(tls_parameters()?),
        SmtpTls::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(smtp.timeout));
    if !smtp.username.is_empty() {
        builder = builder.credentials(Credentials::new(smtp.username.clone(), smtp.password.clone()));
    }
    Ok(Smtp { transport: builder.build(), from })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_decide_between_retry_and_giving_up() {
        assert!(classify(StatusCode::OK, "webhook").is_ok());
        assert!(classify(StatusCode::NO_CONTENT, "webhook").is_ok());
        assert!(classify(StatusCode::NOT_FOUND, "webhook").unwrap_err().permanent);
        assert!(classify(StatusCode::UNAUTHORIZED, "webhook").unwrap_err().permanent);
        assert!(!classify(StatusCode::TOO_MANY_REQUESTS, "webhook").unwrap_err().permanent);
        assert!(!classify(StatusCode::REQUEST_TIMEOUT, "webhook").unwrap_err().permanent);
        let error = classify(StatusCode::SERVICE_UNAVAILABLE, "webhook").unwrap_err();
        assert!(!error.permanent);
        assert_eq!(error.reason, "webhook answered 503");
    }

    #[test]
    fn unset_email_and_sms_are_off_and_say_what_to_set() {
        let channels = Channels::new(&NotificationsSettings::default()).unwrap();
        assert!(channels.available(Channel::Webhook));
        assert!(!channels.available(Channel::Email));
        assert!(!channels.available(Channel::Sms));
        assert!(not_configured(Channel::Email).unwrap().contains("TANDEM_NOTIFICATIONS__SMTP__HOST"));
        assert!(not_configured(Channel::Sms).unwrap().contains("TANDEM_NOTIFICATIONS__SMS__URL"));
    }

    #[test]
    fn bad_sms_settings_fail_at_start() {
        let mut settings = NotificationsSettings::default();
        settings.sms.url = "https://sms.example/send".into();
        settings.sms.secret = "plain".into();
        let error = Channels::new(&settings).unwrap_err().to_string();
        assert!(error.contains("secret"), "{error}");
    }
}
