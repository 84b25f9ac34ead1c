//! Endpoints: where a person is reached. Parsing a registration yields a
//! [`NewEndpoint`] that is valid by construction.

use std::fmt;
use std::str::FromStr;

use chrono_tz::Tz;
use tandem_proto::notifications::v1 as pb;
use tandem_server::status::Violations;

use crate::quiet::{self, QuietHours};

const MAX_URL_LEN: usize = 2048;
const MAX_EMAIL_LEN: usize = 254;
const MAX_SUBJECT_LEN: usize = 128;

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A signed HTTP POST.
    Webhook,
    /// Email over SMTP.
    Email,
    /// SMS through the provider webhook.
    Sms,
    /// The in-app inbox.
    InApp,
}

impl Channel {
    /// The name stored in the database: the contract's stable name.
    pub fn as_str(self) -> &'static str {
        self.to_pb().name()
    }

    /// The wire enum.
    pub fn to_pb(self) -> pb::Channel {
        match self {
            Channel::Webhook => pb::Channel::Webhook,
            Channel::Email => pb::Channel::Email,
            Channel::Sms => pb::Channel::Sms,
            Channel::InApp => pb::Channel::InApp,
        }
    }

    /// From the wire enum; `None` for unspecified or unknown values.
    pub fn from_pb(value: i32) -> Option<Self> {
        match pb::Channel::try_from(value).ok()? {
            pb::Channel::Webhook => Some(Channel::Webhook),
            pb::Channel::Email => Some(Channel::Email),
            pb::Channel::Sms => Some(Channel::Sms),
            pb::Channel::InApp => Some(Channel::InApp),
            pb::Channel::Unspecified => None,
        }
    }

    /// Whether an endpoint on this channel must prove it reaches its owner.
    pub fn needs_verification(self) -> bool {
        self != Channel::InApp
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A channel name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel `{0}`")]
pub struct UnknownChannel(pub String);

impl FromStr for Channel {
    type Err = UnknownChannel;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        pb::Channel::from_name(text)
            .and_then(|channel| Channel::from_pb(channel as i32))
            .ok_or_else(|| UnknownChannel(text.to_owned()))
    }
}

/// A registration, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    /// Whose endpoint; `None` means the caller.
    pub subject: Option<String>,
    /// The channel.
    pub channel: Channel,
    /// The normalised URL, email address or phone number; empty for in-app.
    pub address: String,
    /// Quiet hours start as given ("HH:MM"), or empty.
    pub quiet_hours_start: String,
    /// Quiet hours end as given, or empty.
    pub quiet_hours_end: String,
    /// The time zone as given, or empty.
    pub time_zone: String,
}

/// Parses a registration request, collecting every problem at once.
pub fn parse_registration(request: &pb::RegisterEndpointRequest) -> Result<NewEndpoint, Violations> {
    let mut violations = Violations::new();
    let channel = Channel::from_pb(request.channel);
    let address = match channel {
        None => {
            violations.add("channel", "required: CHANNEL_WEBHOOK, CHANNEL_EMAIL, CHANNEL_SMS or CHANNEL_IN_APP");
            String::new()
        }
        Some(channel) => match parse_address(channel, &request.address) {
            Ok(address) => address,
            Err(why) => {
                violations.add("address", why);
                String::new()
            }
        },
    };
    let subject = request.subject.trim();
    if subject.chars().count() > MAX_SUBJECT_LEN || subject.chars().any(char::is_control) {
        violations.add("subject", format!("at most {MAX_SUBJECT_LEN} printable characters: a token subject"));
    }
    let zone = if request.time_zone.trim().is_empty() {
        Tz::UTC
    } else {
        match quiet::parse_zone(request.time_zone.trim()) {
            Ok(zone) => zone,
            Err(error) => {
                violations.add("time_zone", error.to_string());
                Tz::UTC
            }
        }
    };
    if let Err(error) = QuietHours::parse(&request.quiet_hours_start, &request.quiet_hours_end, zone) {
        let field = match error {
            quiet::QuietError::HalfWindow if request.quiet_hours_start.trim().is_empty() => "quiet_hours_start",
            quiet::QuietError::HalfWindow => "quiet_hours_end",
            _ if request.quiet_hours_start.trim().parse::<quiet::ClockTime>().is_err() => "quiet_hours_start",
            _ => "quiet_hours_end",
        };
        violations.add(field, error.to_string());
    }
    let Some(channel) = channel else {
        return Err(violations);
    };
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(NewEndpoint {
        subject: (!subject.is_empty()).then(|| subject.to_owned()),
        channel,
        address,
        quiet_hours_start: request.quiet_hours_start.trim().to_owned(),
        quiet_hours_end: request.quiet_hours_end.trim().to_owned(),
        time_zone: request.time_zone.trim().to_owned(),
    })
}

/// The normalised address for a channel, or what is wrong with it.
pub fn parse_address(channel: Channel, address: &str) -> Result<String, String> {
    let address = address.trim();
    match channel {
        Channel::Webhook => parse_url(address),
        Channel::Email => parse_email(address),
        Channel::Sms => parse_phone(address),
        Channel::InApp if address.is_empty() => Ok(String::new()),
        Channel::InApp => Err("must be empty for CHANNEL_IN_APP: in-app notifications go to the caller's inbox".into()),
    }
}

fn parse_url(text: &str) -> Result<String, String> {
    const WANT: &str = "a webhook URL such as https://ehr.example.org/tandem/alerts";
    if text.is_empty() {
        return Err(format!("required: {WANT}"));
    }
    if text.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} characters"));
    }
    let url = reqwest::Url::parse(text).map_err(|_| format!("not a URL: expected {WANT}"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(format!("must be https (or http): expected {WANT}"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("has no host: expected {WANT}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials: receivers authenticate us by the webhook signature".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    Ok(url.to_string())
}

fn parse_email(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("required: an email address such as dr.lee@clinic.example".into());
    }
    if text.len() > MAX_EMAIL_LEN {
        return Err(format!("at most {MAX_EMAIL_LEN} characters"));
    }
    let address: lettre::Address =
        text.parse().map_err(|_| "not an email address: expected one such as dr.lee@clinic.example".to_owned())?;
    Ok(address.to_string())
}

fn parse_phone(text: &str) -> Result<String, String> {
    // E.164: "+", a country code that does not start with 0, at most 15
    // digits in all (7 covers the shortest national numbers in use).
    let digits = text.strip_prefix('+').unwrap_or_default();
    let well_formed =
        (7..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) && !digits.starts_with('0');
    if !well_formed {
        return Err(
            "must be an E.164 phone number: \"+\", country code and number, digits only, e.g. +15551230000".into()
        );
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(channel: pb::Channel, address: &str) -> pb::RegisterEndpointRequest {
        pb::RegisterEndpointRequest { channel: channel as i32, address: address.into(), ..Default::default() }
    }

    /// The fields named in the status message ("invalid request: a: ..; b: ..").
    fn fields(violations: Violations) -> Vec<String> {
        let status = violations.into_status();
        let list = status.message().trim_start_matches("invalid request: ").to_owned();
        list.split("; ").map(|part| part.split(':').next().unwrap_or_default().to_owned()).collect()
    }

    #[test]
    fn addresses_are_checked_per_channel() {
        assert_eq!(parse_address(Channel::Webhook, " https://ehr.example/hook ").unwrap(), "https://ehr.example/hook");
        assert!(parse_address(Channel::Webhook, "http://127.0.0.1:8080/x").is_ok());
        assert!(parse_address(Channel::Webhook, "ftp://ehr.example/").is_err());
        assert!(parse_address(Channel::Webhook, "https://user:pw@ehr.example/").is_err());
        assert!(parse_address(Channel::Webhook, "not a url").is_err());
        assert!(parse_address(Channel::Webhook, "").is_err());
        assert_eq!(parse_address(Channel::Email, "dr.lee@clinic.example").unwrap(), "dr.lee@clinic.example");
        assert!(parse_address(Channel::Email, "dr.lee").is_err());
        assert_eq!(parse_address(Channel::Sms, "+15551230000").unwrap(), "+15551230000");
        for bad in ["5551230000", "+0551230000", "+1555", "+1 555 123", "+1234567890123456"] {
            assert!(parse_address(Channel::Sms, bad).is_err(), "{bad}");
        }
        assert!(parse_address(Channel::InApp, "").is_ok());
        assert!(parse_address(Channel::InApp, "x").is_err());
    }

    #[test]
    fn a_registration_reports_every_bad_field() {
        let mut bad = request(pb::Channel::Sms, "12345");
        bad.quiet_hours_start = "25:00".into();
        bad.quiet_hours_end = "07:00".into();
        bad.time_zone = "Nowhere/Land".into();
        let got = fields(parse_registration(&bad).unwrap_err());
        assert!(got.iter().any(|f| f == "address"), "{got:?}");
        assert!(got.iter().any(|f| f == "quiet_hours_start"), "{got:?}");
        assert!(got.iter().any(|f| f == "time_zone"), "{got:?}");
        let missing = fields(parse_registration(&request(pb::Channel::Unspecified, "")).unwrap_err());
        assert!(missing.iter().any(|f| f == "channel"), "{missing:?}");
        let mut half = request(pb::Channel::InApp, "");
        half.quiet_hours_start = "22:00".into();
        let got = fields(parse_registration(&half).unwrap_err());
        assert!(got.iter().any(|f| f == "quiet_hours_end"), "{got:?}");
    }

    #[test]
    fn a_good_registration_parses() {
        let mut good = request(pb::Channel::Webhook, "https://ehr.example/hook");
        good.subject = " on-call ".into();
        good.quiet_hours_start = "22:00".into();
        good.quiet_hours_end = "07:00".into();
        good.time_zone = "Europe/London".into();
        let parsed = parse_registration(&good).unwrap();
        assert_eq!(parsed.subject.as_deref(), Some("on-call"));
        assert_eq!(parsed.channel, Channel::Webhook);
        assert_eq!(parsed.time_zone, "Europe/London");
        assert_eq!(parse_registration(&request(pb::Channel::InApp, "")).unwrap().subject, None);
    }

    #[test]
    fn channel_names_round_trip() {
        for channel in [Channel::Webhook, Channel::Email, Channel::Sms, Channel::InApp] {
            assert_eq!(channel.as_str().parse::<Channel>().unwrap(), channel);
            assert_eq!(Channel::from_pb(channel.to_pb() as i32), Some(channel));
        }
        assert!("pager".parse::<Channel>().is_err());
    }
}
