//! The notifications service's own settings (section `notifications` of the
//! config file; `TANDEM_NOTIFICATIONS__...` in the environment, e.g.
//! `TANDEM_NOTIFICATIONS__SMTP__HOST=smtp.example.org`).
//!
//! Every default works for `tandem up` without any outside service: email
//! and SMS stay off until `smtp.host` and `sms.url` are set.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the notifications service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NotificationsSettings {
    /// Email over SMTP.
    pub smtp: SmtpSettings,
    /// SMS through a provider webhook.
    pub sms: SmsSettings,
    /// Webhook delivery.
    pub webhook: WebhookSettings,
    /// Retries of crisis alerts and verification codes.
    pub alert_retry: AlertRetry,
    /// Retries of reminders.
    pub reminder_retry: ReminderRetry,
    /// Verification codes.
    pub verification: VerificationSettings,
    /// The delivery worker.
    pub worker: WorkerSettings,
    /// Reminders of due measures and homework.
    pub reminders: ReminderSettings,
    /// How long finished deliveries and in-app messages are kept.
    pub retention: RetentionSettings,
}

/// How long notifications keeps what it sent (section
/// `notifications.retention`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionSettings {
    /// Time between passes.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// How long a delivery that ended (delivered, failed, cancelled) is kept
    /// after it was queued; pending ones are never removed.
    #[serde(with = "humantime_serde")]
    pub deliveries: Duration,
    /// How long an in-app message is kept after it was created.
    #[serde(with = "humantime_serde")]
    pub in_app: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self { every: Duration::from_secs(3600), deliveries: DAY * 90, in_app: DAY * 90 }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS, required (port 587).
    #[default]
    Starttls,
    /// STARTTLS when the server offers it, else plain text.
    Opportunistic,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// Plain text: only for a relay on the same host or a test sink.
    None,
}

/// Email over SMTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmtpSettings {
    /// The SMTP relay's host name; empty turns email off.
    pub host: String,
    /// The relay's port.
    pub port: u16,
    /// The sender, e.g. `Tandem <alerts@clinic.example>`.
    pub from: String,
    /// The user name, if the relay wants one.
    pub username: String,
    /// The password, if the relay wants one.
    pub password: String,
    /// How the connection is secured.
    pub tls: SmtpTls,
    /// How long one message may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 587,
            from: "Tandem <notifications@tandem.invalid>".to_owned(),
            username: String::new(),
            password: String::new(),
            tls: SmtpTls::Starttls,
            timeout: Duration::from_secs(10),
        }
    }
}

impl SmtpSettings {
    /// Whether email can be sent.
    pub fn configured(&self) -> bool {
        !self.host.trim().is_empty()
    }
}

/// SMS through a provider webhook: `POST {"to": "+1...", "body": "..."}`,
/// signed the Standard Webhooks way with `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmsSettings {
    /// The provider's URL; empty turns SMS off.
    pub url: String,
    /// The provider's signing secret, `whsec_` + base64.
    pub secret: String,
    /// How long one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SmsSettings {
    fn default() -> Self {
        Self { url: String::new(), secret: String::new(), timeout: Duration::from_secs(5) }
    }
}

impl SmsSettings {
    /// Whether SMS can be sent.
    pub fn configured(&self) -> bool {
        !self.url.trim().is_empty()
    }
}

/// Webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// How long one request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(5) }
    }
}

/// Declares a retry section with its own defaults, so a partial section in a
/// file fills its missing keys from the right defaults.
macro_rules! retry_section {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $attempts:expr, $give_up:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name {
            /// Delay before the second attempt (before jitter).
            #[serde(with = "humantime_serde")]
            pub min_delay: Duration,
            /// Longest delay between attempts (before jitter, which adds up to as much again).
            #[serde(with = "humantime_serde")]
            pub max_delay: Duration,
            /// Attempts in all, the first included.
            pub max_attempts: u32,
            /// After this long since the delivery was queued no further attempt
            /// is made and it counts as failed.
            #[serde(with = "humantime_serde")]
            pub give_up_after: Duration,
        }

        impl Default for $name {
            fn default() -> Self {
                Self { min_delay: $min, max_delay: $max, max_attempts: $attempts, give_up_after: $give_up }
            }
        }

        impl $name {
            /// The policy these settings describe.
            pub fn policy(&self) -> crate::retry::RetryPolicy {
                crate::retry::RetryPolicy {
                    min_delay: self.min_delay,
                    max_delay: self.max_delay,
                    max_attempts: self.max_attempts.max(1),
                    give_up_after: self.give_up_after,
                }
            }
        }
    };
}

retry_section!(
    /// Retries of crisis alerts and verification codes: 5 attempts, decided
    /// within a minute, so triage hears "not reached" quickly and moves the
    /// chain on.
    AlertRetry,
    Duration::from_secs(1),
    Duration::from_secs(15),
    5,
    Duration::from_secs(60)
);

retry_section!(
    /// Retries of reminders: patient, over hours.
    ReminderRetry,
    Duration::from_secs(30),
    Duration::from_secs(30 * 60),
    8,
    Duration::from_secs(12 * 3600)
);

/// Verification codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerificationSettings {
    /// How long a code is valid.
    #[serde(with = "humantime_serde")]
    pub code_ttl: Duration,
    /// Wrong codes allowed before the endpoint must be registered again.
    pub max_attempts: u32,
}

impl Default for VerificationSettings {
    fn default() -> Self {
        Self { code_ttl: Duration::from_secs(15 * 60), max_attempts: 5 }
    }
}

/// The delivery worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// How often the worker looks for due deliveries without a wake-up.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// How long a claimed delivery stays with its worker. A worker that dies
    /// mid-delivery leaves its claim; another takes the delivery over after
    /// this. Longer than any channel's timeout.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Deliveries claimed and attempted at once.
    pub batch: u32,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { poll: Duration::from_secs(1), lease: Duration::from_secs(30), batch: 16 }
    }
}

/// Reminders of due measures and homework.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReminderSettings {
    /// Whether the scheduler runs.
    pub enabled: bool,
    /// How often the scheduler looks for due items.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// An occurrence older than this gets no reminder (e.g. after downtime).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Quiet hours of endpoints that set none, "HH:MM" local; empty for none.
    pub quiet_hours_start: String,
    /// End of the default quiet hours, "HH:MM" local; empty for none.
    pub quiet_hours_end: String,
}

impl Default for ReminderSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            tick: Duration::from_secs(60),
            window: Duration::from_secs(24 * 3600),
            quiet_hours_start: "21:00".to_owned(),
            quiet_hours_end: "08:00".to_owned(),
        }
    }
}

#[cfg(test)]
// figment's Jail fixes the closure's error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_leave_email_and_sms_off_and_bound_crisis_retries_to_a_minute() {
        let settings = NotificationsSettings::default();
        assert!(!settings.smtp.configured());
        assert!(!settings.sms.configured());
        assert_eq!(settings.alert_retry.max_attempts, 5);
        assert_eq!(settings.alert_retry.give_up_after, Duration::from_secs(60));
        assert!(settings.worker.lease > settings.webhook.timeout);
        assert!(settings.worker.lease > settings.smtp.timeout);
    }

    #[test]
    fn durations_read_as_text() {
        let json = r#"{"alert_retry": {"min_delay": "10ms", "give_up_after": "2s"}, "reminder_retry": {"max_attempts": 2},
            "smtp": {"host": "mail", "tls": "none"}}"#;
        let settings: NotificationsSettings = serde_json::from_str(json).unwrap();
        assert_eq!(settings.alert_retry.min_delay, Duration::from_millis(10));
        assert_eq!(settings.alert_retry.give_up_after, Duration::from_secs(2));
        assert_eq!(settings.alert_retry.max_attempts, 5);
        assert_eq!(settings.reminder_retry.max_attempts, 2);
        assert_eq!(settings.reminder_retry.min_delay, Duration::from_secs(30), "reminder defaults fill the gaps");
        assert_eq!(settings.smtp.tls, SmtpTls::None);
        assert!(settings.smtp.configured());
        let bad = serde_json::from_str::<NotificationsSettings>(r#"{"worker": {"poll": "soon"}}"#);
        assert!(bad.unwrap_err().to_string().contains("expected a duration"));
    }

    #[test]
    fn the_environment_configures_the_section() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TANDEM_NOTIFICATIONS__SMTP__HOST", "smtp.clinic.example");
            jail.set_env("TANDEM_NOTIFICATIONS__SMTP__PORT", "2525");
            jail.set_env("TANDEM_NOTIFICATIONS__SMTP__TLS", "tls");
            jail.set_env("TANDEM_NOTIFICATIONS__SMS__URL", "https://sms.example/send");
            jail.set_env("TANDEM_NOTIFICATIONS__ALERT_RETRY__GIVE_UP_AFTER", "45s");
            jail.set_env("TANDEM_NOTIFICATIONS__REMINDERS__ENABLED", "false");
            let figment = tandem_server::Settings::figment(None).map_err(|error| error.to_string())?;
            let settings: NotificationsSettings =
                tandem_server::config::section(&figment, "notifications").map_err(|error| error.to_string())?;
            assert_eq!(settings.smtp.host, "smtp.clinic.example");
            assert_eq!(settings.smtp.port, 2525);
            assert_eq!(settings.smtp.tls, SmtpTls::Tls);
            assert_eq!(settings.sms.url, "https://sms.example/send");
            assert_eq!(settings.alert_retry.give_up_after, Duration::from_secs(45));
            assert_eq!(settings.alert_retry.max_attempts, 5);
            assert!(!settings.reminders.enabled);
            Ok(())
        });
    }

    #[test]
    fn no_section_means_the_defaults() {
        figment::Jail::expect_with(|_| {
            let figment = tandem_server::Settings::figment(None).map_err(|error| error.to_string())?;
            let settings: NotificationsSettings =
                tandem_server::config::section(&figment, "notifications").map_err(|error| error.to_string())?;
            assert_eq!(settings, NotificationsSettings::default());
            Ok(())
        });
    }
}
