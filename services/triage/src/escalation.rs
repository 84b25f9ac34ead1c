//! The escalation state machine, without I/O. Each function takes an
//! escalation as stored, what triage knows now (the chain, the rules) and
//! the time, and returns the [`Transition`] to write and announce, or
//! nothing when the escalation moved on meanwhile. The engine writes a
//! transition (row, timeline, events) in one transaction.
//!
//! raised → notified (step k of the care-team chain) → acknowledged →
//! resolved, where:
//! - a passing deadline, or an alert that reached nobody, moves to the next
//!   step; past the chain's end is the org's crisis contact, paged again at
//!   each deadline until a human acknowledges;
//! - a higher-level trigger joining the open escalation raises its level,
//!   shortens the deadline and re-alerts whoever holds it at the new level;
//! - the care team arriving after the alert went to the crisis contact
//!   because no care team was known hands it back to the step the chain
//!   would be at;
//! - an acknowledged or resolved escalation is never alerted again.
//!
//! Every alert is a new attempt (a counter apart from the step, since a
//! re-alert keeps the step), and notifications de-duplicates on
//! (escalation, attempt): each attempt reaches each channel once.

use std::time::Duration;

use tandem_proto::events::v1::{AlertReason, EscalationChange};
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::triage::v1 as pb;

use crate::config::ack_window;
use crate::repo::{Escalation, State};

/// The window used if the rules give a level none (never for a level that
/// escalates; a guard, not a policy).
const FALLBACK_WINDOW: Duration = Duration::from_secs(300);

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// What triage knows about the patient when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The care-team chain in order; empty while the care team is unknown.
    pub chain: &'a [String],
    /// The rules that apply to the patient.
    pub rules: &'a pb::TriageRules,
}

impl Context<'_> {
    /// Who step `step` alerts: the chain's member, or past its end the
    /// org's crisis contact (`true`).
    pub fn recipient(&self, step: u32) -> (String, bool) {
        match self.chain.get(step as usize) {
            Some(member) => (member.clone(), false),
            None => (self.rules.crisis_contact.clone(), true),
        }
    }

    /// Who step `step` of `escalation` alerts: an escalation opened for a
    /// dead letter alerts only the crisis contact.
    fn recipient_of(&self, escalation: &Escalation, step: u32) -> (String, bool) {
        if escalation.dead_letter.is_some() {
            return (self.rules.crisis_contact.clone(), true);
        }
        self.recipient(step)
    }

    fn window(&self, level: pb::RiskLevel) -> i64 {
        micros(ack_window(self.rules, level).unwrap_or(FALLBACK_WINDOW))
    }

    fn where_to(&self, step: u32) -> String {
        match self.chain.get(step as usize) {
            Some(_) => format!("step {} of the care team", step + 1),
            None if self.chain.is_empty() => "no care team known: the org's crisis contact".to_owned(),
            None => "past the care team: the org's crisis contact".to_owned(),
        }
    }
}

/// Why an alert is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The escalation was raised.
    Raised,
    /// The previous step did not acknowledge in time.
    DeadlinePassed,
    /// The previous step could not be reached on any channel.
    NotReached,
    /// A higher-level trigger joined: the holder is re-alerted.
    LevelRaised,
    /// The care team became known: handed back from the crisis contact.
    CareTeamKnown,
}

impl Reason {
    /// The reason on the wire (`EscalationChanged.alert_reason`).
    pub fn to_pb(self) -> AlertReason {
        match self {
            Reason::Raised => AlertReason::Raised,
            Reason::DeadlinePassed => AlertReason::DeadlinePassed,
            Reason::NotReached => AlertReason::NotReached,
            Reason::LevelRaised => AlertReason::LevelRaised,
            Reason::CareTeamKnown => AlertReason::CareTeamKnown,
        }
    }
}

/// An `EscalationChanged` to announce, about the escalation as it is after
/// the transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// A new escalation.
    Raised,
    /// Alert the current recipient (a new attempt).
    Notify {
        /// Why.
        reason: Reason,
        /// Whether the recipient is the org's crisis contact.
        crisis_contact: bool,
        /// For a re-alert, the level it was raised from.
        previous_level: Option<pb::RiskLevel>,
    },
    /// The level went up.
    LevelRaised {
        /// The level before.
        from: pb::RiskLevel,
    },
    /// The crisis contact no longer holds it: the care team does.
    HandedBack {
        /// The crisis contact who held it.
        crisis_contact: String,
    },
    /// A human acknowledged.
    Acknowledged,
    /// Closed with an outcome.
    Resolved,
}

impl Announcement {
    /// The change on the wire (`EscalationChanged.kind`).
    pub fn kind(&self) -> EscalationChange {
        match self {
            Announcement::Raised => EscalationChange::Raised,
            Announcement::Notify { .. } => EscalationChange::Notify,
            Announcement::LevelRaised { .. } => EscalationChange::LevelRaised,
            Announcement::HandedBack { .. } => EscalationChange::HandedBack,
            Announcement::Acknowledged => EscalationChange::Acknowledged,
            Announcement::Resolved => EscalationChange::Resolved,
        }
    }
}

/// One timeline entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What happened, e.g. "notify", "deadline_passed".
    pub kind: &'static str,
    /// Who did it or whom it concerns.
    pub actor: String,
    /// A readable detail (never patient text).
    pub detail: String,
}

fn entry(kind: &'static str, actor: &str, detail: impl Into<String>) -> Entry {
    Entry { kind, actor: actor.to_owned(), detail: detail.into() }
}

/// A change of one escalation: the row to write, the timeline to append and
/// the events to announce, in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The row as it was read (`None` for a new escalation). The write only
    /// happens if it is still stored so.
    pub before: Option<Escalation>,
    /// The row after.
    pub after: Escalation,
    /// Timeline entries, in order.
    pub timeline: Vec<Entry>,
    /// Events, in order.
    pub announce: Vec<Announcement>,
}

impl Transition {
    fn from(before: &Escalation) -> Self {
        Self { before: Some(before.clone()), after: before.clone(), timeline: Vec::new(), announce: Vec::new() }
    }

    /// Whether the row changes (else only the timeline grows).
    pub fn changes_row(&self) -> bool {
        self.before.as_ref() != Some(&self.after)
    }

    /// The alert this transition sends, if it sends one.
    pub fn alert(&self) -> Option<Reason> {
        self.announce.iter().find_map(|announced| match announced {
            Announcement::Notify { reason, .. } => Some(*reason),
            _ => None,
        })
    }

    fn notify(&mut self, ctx: &Context<'_>, reason: Reason, previous_level: Option<pb::RiskLevel>, detail: String) {
        let crisis_contact = self.after.dead_letter.is_some() || self.after.step as usize >= ctx.chain.len();
        self.timeline.push(entry("notify", &self.after.current_recipient, detail));
        self.announce.push(Announcement::Notify { reason, crisis_contact, previous_level });
    }
}

/// Why an acknowledgement or resolution is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// "moderate", "high", "imminent".
fn level_name(level: pb::RiskLevel) -> String {
    level.as_str_name().trim_start_matches("RISK_LEVEL_").to_lowercase()
}

/// A new escalation at `level` alerting step 1 of the chain (or the crisis
/// contact when there is no chain); `None` for levels that do not escalate.
#[allow(clippy::too_many_arguments)]
pub fn raise(
    id: EscalationId,
    org: &OrgId,
    patient: &PatientId,
    level: pb::RiskLevel,
    why: &str,
    ctx: &Context<'_>,
    now: i64,
) -> Option<Transition> {
    let window = ack_window(ctx.rules, level)?;
    let (recipient, _) = ctx.recipient(0);
    let after = notified(id, org, patient, level, recipient, now.saturating_add(micros(window)), now);
    Some(opened(after, why, ctx, ctx.where_to(0)))
}

/// A new escalation at `level`, notified at its first step: `recipient`
/// holds it until `ack_deadline`.
fn notified(
    id: EscalationId,
    org: &OrgId,
    patient: &PatientId,
    level: pb::RiskLevel,
    recipient: String,
    ack_deadline: i64,
    now: i64,
) -> Escalation {
    Escalation {
        id,
        org: org.clone(),
        patient: *patient,
        level,
        first_level: level,
        state: State::Notified,
        step: 0,
        attempt: 0,
        current_recipient: recipient,
        ack_deadline: Some(ack_deadline),
        raised_at: now,
        acknowledged_at: None,
        acknowledged_by: None,
        resolved_at: None,
        outcome: None,
        dead_letter: None,
    }
}

/// The transition that opens `after`: raised, announced, and its first
/// alert sent to `to` (as the timeline names it).
fn opened(after: Escalation, why: &str, ctx: &Context<'_>, to: String) -> Transition {
    let mut transition =
        Transition { before: None, after, timeline: vec![entry("raised", "triage", why)], announce: Vec::new() };
    transition.announce.push(Announcement::Raised);
    transition.notify(ctx, Reason::Raised, None, to);
    transition
}

/// Who a dead letter's escalation alerts, in its timeline.
const DEAD_LETTER_RECIPIENT: &str = "an unprocessable crisis event: the org's crisis contact";

/// A crisis event that can never be processed (a dead letter, `key`) for
/// the patient: an escalation of its own, routed straight to the org's
/// crisis contact and paged again at each deadline until someone
/// acknowledges. Nobody can read what the event said, so its true level is
/// unknown and it is treated as the highest (imminent, the shortest
/// deadline): a signal is never lowered. It stays apart from the patient's
/// escalation of assessed risk, which keeps alerting the care team for
/// what can be read.
pub fn unprocessable(
    id: EscalationId,
    org: &OrgId,
    patient: &PatientId,
    key: &str,
    why: &str,
    ctx: &Context<'_>,
    now: i64,
) -> Transition {
    let level = pb::RiskLevel::Imminent;
    let deadline = now.saturating_add(ctx.window(level));
    let after = Escalation {
        dead_letter: Some(key.to_owned()),
        ..notified(id, org, patient, level, ctx.rules.crisis_contact.clone(), deadline, now)
    };
    opened(after, why, ctx, DEAD_LETTER_RECIPIENT.to_owned())
}

/// Another trigger for a patient with an open escalation joins it instead of
/// paging again. A higher level raises it; while it is unacknowledged that
/// also shortens the deadline and re-alerts the holder at the new level.
pub fn join(open: &Escalation, level: pb::RiskLevel, why: &str, ctx: &Context<'_>, now: i64) -> Transition {
    let mut transition = Transition::from(open);
    transition.timeline.push(entry("joined", "triage", why));
    if (level as i32) <= (open.level as i32) {
        return transition;
    }
    transition.after.level = level;
    let detail = format!("level raised from {} to {}", level_name(open.level), level_name(level));
    transition.timeline.push(entry("level_raised", "triage", detail));
    transition.announce.push(Announcement::LevelRaised { from: open.level });
    if open.state != State::Notified {
        // Acknowledged: a human has it; the level is recorded, nobody paged.
        return transition;
    }
    let sooner = now.saturating_add(ctx.window(level));
    transition.after.ack_deadline = Some(open.ack_deadline.map_or(sooner, |at| at.min(sooner)));
    transition.after.attempt = open.attempt + 1;
    let detail = format!("re-alerted at {}: {}", level_name(level), ctx.where_to(open.step));
    transition.notify(ctx, Reason::LevelRaised, Some(open.level), detail);
    transition
}

/// The alert of `attempt` was not acknowledged in time (`DeadlinePassed`)
/// or reached nobody (`NotReached`): alert the next step. `None` if the
/// escalation moved on meanwhile (acknowledged, or a later attempt).
pub fn advance(
    current: &Escalation,
    attempt: u32,
    reason: Reason,
    detail: &str,
    ctx: &Context<'_>,
    now: i64,
) -> Option<Transition> {
    if current.state != State::Notified || current.attempt != attempt {
        return None;
    }
    let kind = match reason {
        Reason::NotReached => "not_reached",
        _ => "deadline_passed",
    };
    let step = current.step + 1;
    let (recipient, _) = ctx.recipient_of(current, step);
    let mut transition = Transition::from(current);
    transition.after.step = step;
    transition.after.attempt = attempt + 1;
    transition.after.current_recipient = recipient;
    transition.after.ack_deadline = Some(now.saturating_add(ctx.window(current.level)));
    transition.timeline.push(entry(kind, &current.current_recipient, detail));
    let whom = if current.dead_letter.is_some() { DEAD_LETTER_RECIPIENT.to_owned() } else { ctx.where_to(step) };
    transition.notify(ctx, reason, None, whom);
    Some(transition)
}

/// The alert of `attempt` reached nobody. Within the care team that moves
/// the escalation on at once; past its end (the crisis contact) there is no
/// one further, so it is recorded and the deadline pages the crisis contact
/// again, rather than paging in a tight loop.
pub fn not_reached(
    current: &Escalation,
    attempt: u32,
    detail: &str,
    ctx: &Context<'_>,
    now: i64,
) -> Option<Transition> {
    if current.state != State::Notified || current.attempt != attempt {
        return None;
    }
    if current.dead_letter.is_none() && (current.step as usize) < ctx.chain.len() {
        return advance(current, attempt, Reason::NotReached, detail, ctx, now);
    }
    let mut transition = Transition::from(current);
    transition.timeline.push(entry("not_reached", &current.current_recipient, detail));
    Some(transition)
}

/// The care team changed from `known_before` to `ctx.chain`. An alert that
/// went to the crisis contact only because no care team was known goes back
/// to the step the chain would be at (the primary, unless deadlines passed
/// meanwhile) with a fresh deadline, and the crisis contact is told. If the
/// chain would already have run out, the crisis contact keeps it.
pub fn hand_back(current: &Escalation, known_before: &[String], ctx: &Context<'_>, now: i64) -> Option<Transition> {
    // A dead letter's escalation stays with the crisis contact: it is not
    // about a risk the care team could read.
    if current.state != State::Notified || !known_before.is_empty() || current.dead_letter.is_some() {
        return None;
    }
    let (recipient, past_chain) = ctx.recipient(current.step);
    if past_chain {
        return None;
    }
    let mut transition = Transition::from(current);
    transition.after.current_recipient = recipient;
    transition.after.attempt = current.attempt + 1;
    transition.after.ack_deadline = Some(now.saturating_add(ctx.window(current.level)));
    let detail = format!("the care team is known now: handed back to {}", ctx.where_to(current.step));
    transition.timeline.push(entry("handed_back", &current.current_recipient, detail));
    transition.notify(ctx, Reason::CareTeamKnown, None, ctx.where_to(current.step));
    transition.announce.push(Announcement::HandedBack { crisis_contact: current.current_recipient.clone() });
    Some(transition)
}

/// A human acknowledges: the chain stops. `Ok(None)` when it already was.
pub fn acknowledge(current: &Escalation, who: &str, note: &str, now: i64) -> Result<Option<Transition>, Refused> {
    match current.state {
        State::Acknowledged => return Ok(None),
        State::Resolved => return Err(Refused("the escalation is already resolved".to_owned())),
        State::Raised | State::Notified => {}
    }
    let mut transition = Transition::from(current);
    transition.after.state = State::Acknowledged;
    transition.after.ack_deadline = None;
    transition.after.acknowledged_at = Some(now);
    transition.after.acknowledged_by = Some(who.to_owned());
    let seconds = (now - current.raised_at) as f64 / 1e6;
    let detail = if note.is_empty() {
        format!("acknowledged {seconds:.0}s after it was raised")
    } else {
        format!("acknowledged {seconds:.0}s after it was raised: {note}")
    };
    transition.timeline.push(entry("acknowledged", who, detail));
    transition.announce.push(Announcement::Acknowledged);
    Ok(Some(transition))
}

/// Closes an acknowledged escalation with an outcome. `Ok(None)` when it
/// already was.
pub fn resolve(current: &Escalation, who: &str, outcome: &str, now: i64) -> Result<Option<Transition>, Refused> {
    match current.state {
        State::Resolved => return Ok(None),
        State::Raised | State::Notified => {
            return Err(Refused("acknowledge the escalation first: resolving says how a human handled it".to_owned()));
        }
        State::Acknowledged => {}
    }
    let mut transition = Transition::from(current);
    transition.after.state = State::Resolved;
    transition.after.resolved_at = Some(now);
    transition.after.outcome = Some(outcome.to_owned());
    transition.timeline.push(entry("resolved", who, outcome));
    transition.announce.push(Announcement::Resolved);
    Ok(Some(transition))
}

/// Whether the escalation's deadline has passed at `now`.
pub fn is_due(escalation: &Escalation, now: i64) -> bool {
    escalation.state == State::Notified && escalation.ack_deadline.is_some_and(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TriageSettings;

    const SECOND: i64 = 1_000_000;
    const T0: i64 = 1_800_000_000 * SECOND;

    fn rules() -> pb::TriageRules {
        // moderate 24 h, high 15 min, imminent 5 min; crisis contact "on-call".
        TriageSettings::default().default_rules()
    }

    fn team() -> Vec<String> {
        vec!["dr-primary".to_owned(), "dr-backup".to_owned()]
    }

    fn raised(level: pb::RiskLevel, chain: &[String]) -> Escalation {
        let rules = rules();
        let ctx = Context { chain, rules: &rules };
        let org: OrgId = "north".parse().unwrap();
        raise(EscalationId::new(), &org, &PatientId::new(), level, "phq9-item9: 1", &ctx, T0).unwrap().after
    }

    fn notify_of(transition: &Transition) -> Option<(Reason, bool, Option<pb::RiskLevel>)> {
        transition.announce.iter().find_map(|a| match a {
            Announcement::Notify { reason, crisis_contact, previous_level } => {
                Some((*reason, *crisis_contact, *previous_level))
            }
            _ => None,
        })
    }

    #[test]
    fn raising_alerts_the_first_step_with_the_levels_deadline() {
        let rules = rules();
        let chain = team();
        let ctx = Context { chain: &chain, rules: &rules };
        let org: OrgId = "north".parse().unwrap();
        let t = raise(EscalationId::new(), &org, &PatientId::new(), pb::RiskLevel::High, "why", &ctx, T0).unwrap();
        assert_eq!(t.before, None);
        assert_eq!((t.after.step, t.after.attempt, t.after.current_recipient.as_str()), (0, 0, "dr-primary"));
        assert_eq!(t.after.state, State::Notified);
        assert_eq!(t.after.ack_deadline, Some(T0 + 15 * 60 * SECOND));
        assert_eq!(t.announce[0], Announcement::Raised);
        assert_eq!(notify_of(&t), Some((Reason::Raised, false, None)));
        assert!(
            raise(EscalationId::new(), &org, &PatientId::new(), pb::RiskLevel::Low, "why", &ctx, T0).is_none(),
            "low does not escalate"
        );
    }

    #[test]
    fn without_a_care_team_the_crisis_contact_is_alerted() {
        let e = raised(pb::RiskLevel::Imminent, &[]);
        assert_eq!((e.step, e.current_recipient.as_str()), (0, "on-call"));
        let rules = rules();
        let ctx = Context { chain: &[], rules: &rules };
        let org: OrgId = "north".parse().unwrap();
        let t = raise(EscalationId::new(), &org, &PatientId::new(), pb::RiskLevel::Imminent, "w", &ctx, T0).unwrap();
        assert_eq!(notify_of(&t), Some((Reason::Raised, true, None)));
        assert!(t.timeline.iter().any(|e| e.detail.contains("no care team known")));
    }

    #[test]
    fn a_passed_deadline_climbs_the_chain_then_keeps_paging_the_crisis_contact() {
        let rules = rules();
        let chain = team();
        let ctx = Context { chain: &chain, rules: &rules };
        let first = raised(pb::RiskLevel::High, &chain);
        assert!(!is_due(&first, T0 + 15 * 60 * SECOND - 1));
        let at = T0 + 15 * 60 * SECOND;
        assert!(is_due(&first, at));
        let second = advance(&first, 0, Reason::DeadlinePassed, "late", &ctx, at).unwrap();
        assert_eq!(
            (second.after.step, second.after.attempt, second.after.current_recipient.as_str()),
            (1, 1, "dr-backup")
        );
        assert_eq!(second.after.ack_deadline, Some(at + 15 * 60 * SECOND));
        assert_eq!(second.timeline[0].kind, "deadline_passed");
        assert_eq!(second.timeline[0].actor, "dr-primary");
        assert_eq!(notify_of(&second), Some((Reason::DeadlinePassed, false, None)));
        // The same deadline seen twice (another replica, a retry) does nothing.
        assert!(advance(&second.after, 0, Reason::DeadlinePassed, "late", &ctx, at).is_none());
        let third = advance(&second.after, 1, Reason::DeadlinePassed, "late", &ctx, at + 1).unwrap();
        assert_eq!((third.after.step, third.after.current_recipient.as_str()), (2, "on-call"));
        assert_eq!(notify_of(&third), Some((Reason::DeadlinePassed, true, None)));
        let again = advance(&third.after, 2, Reason::DeadlinePassed, "late", &ctx, at + 2).unwrap();
        assert_eq!((again.after.step, again.after.attempt, again.after.current_recipient.as_str()), (3, 3, "on-call"));
    }

    #[test]
    fn an_unreachable_step_moves_on_at_once_but_the_crisis_contact_waits_for_the_deadline() {
        let rules = rules();
        let chain = team();
        let ctx = Context { chain: &chain, rules: &rules };
        let first = raised(pb::RiskLevel::High, &chain);
        let moved = not_reached(&first, 0, "no endpoint", &ctx, T0 + SECOND).unwrap();
        assert_eq!((moved.after.step, moved.after.current_recipient.as_str()), (1, "dr-backup"));
        assert_eq!(moved.timeline[0].kind, "not_reached");
        assert_eq!(notify_of(&moved), Some((Reason::NotReached, false, None)));
        // A late failure of an earlier attempt changes nothing.
        assert!(not_reached(&moved.after, 0, "no endpoint", &ctx, T0 + 2 * SECOND).is_none());

        let lone = raised(pb::RiskLevel::High, &[]);
        let recorded = not_reached(&lone, 0, "no endpoint", &Context { chain: &[], rules: &rules }, T0).unwrap();
        assert!(!recorded.changes_row(), "the crisis contact keeps it until the deadline");
        assert!(recorded.announce.is_empty());
        assert_eq!(recorded.timeline[0].kind, "not_reached");
    }

    #[test]
    fn a_trigger_at_the_same_level_joins_without_paging() {
        let rules = rules();
        let chain = team();
        let ctx = Context { chain: &chain, rules: &rules };
        let open = raised(pb::RiskLevel::High, &chain);
        let t = join(&open, pb::RiskLevel::High, "journal", &ctx, T0 + SECOND);
        assert!(!t.changes_row());
        assert!(t.announce.is_empty());
        assert_eq!(t.timeline.len(), 1);
        assert_eq!(t.timeline[0].kind, "joined");
        let lower = join(&open, pb::RiskLevel::Moderate, "phq9", &ctx, T0 + SECOND);
        assert!(!lower.changes_row() && lower.alert().is_none());
    }

    #[test]
    fn a_higher_trigger_raises_the_level_shortens_the_deadline_and_re_alerts_the_holder() {
        let rules = rules();
        let chain = team();
        let ctx = Context { chain: &chain, rules: &rules };
        let open = raised(pb::RiskLevel::Moderate, &chain);
        assert_eq!(open.ack_deadline, Some(T0 + 24 * 3600 * SECOND));
        let at = T0 + 60 * SECOND;
        let t = join(&open, pb::RiskLevel::Imminent, tandem_clinical::CRISIS_LANGUAGE_TRIGGER, &ctx, at);
        assert_eq!(t.after.level, pb::RiskLevel::Imminent);
        assert_eq!(t.after.first_level, pb::RiskLevel::Moderate);
        assert_eq!(t.after.ack_deadline, Some(at + 5 * 60 * SECOND), "the imminent window from now");
        assert_eq!((t.after.step, t.after.attempt, t.after.current_recipient.as_str()), (0, 1, "dr-primary"));
        assert_eq!(
            t.announce,
            vec![
                Announcement::LevelRaised { from: pb::RiskLevel::Moderate },
                Announcement::Notify {
                    reason: Reason::LevelRaised,
                    crisis_contact: false,
                    previous_level: Some(pb::RiskLevel::Moderate)
                },
            ]
        );
        let kinds: Vec<_> = t.timeline.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["joined", "level_raised", "notify"]);
        assert!(t.timeline[2].detail.contains("imminent"), "{}", t.timeline[2].detail);

        // A deadline already sooner than the new window stays.
        let mut close = open.clone();
        close.ack_deadline = Some(at + SECOND);
        let kept = join(&close, pb::RiskLevel::Imminent, "x", &ctx, at);
        assert_eq!(kept.after.ack_deadline, Some(at + SECOND));
    }

    #[test]
    fn a_raise_while_the_crisis_contact_holds_it_re_alerts_the_crisis_contact() {
        let rules = rules();
        let ctx = Context { chain: &[], rules: &rules };
        let open = raised(pb::RiskLevel::Moderate, &[]);
        let t = join(&open, pb::RiskLevel::High, "x", &ctx, T0 + SECOND);
        assert_eq!(t.after.current_recipient, "on-call");
        assert_eq!(notify_of(&t), Some((Reason::LevelRaised, true, Some(pb::RiskLevel::Moderate))));
    }

    #[test]
    fn an_acknowledged_escalation_is_raised_but_never_re_alerted() {
        let rules = rules();
        let chain = team();
        let ctx = Context { chain: &chain, rules: &rules };
        let open = raised(pb::RiskLevel::Moderate, &chain);
        let acknowledged = acknowledge(&open, "dr-primary", "", T0 + SECOND).unwrap().unwrap().after;
        let t = join(&acknowledged, pb::RiskLevel::Imminent, "x", &ctx, T0 + 2 * SECOND);
        assert_eq!(t.after.level, pb::RiskLevel::Imminent);
        assert_eq!(t.after.state, State::Acknowledged);
        assert_eq!(t.after.attempt, acknowledged.attempt);
        assert_eq!(t.after.ack_deadline, None);
        assert_eq!(t.alert(), None, "a human has it: nobody is paged");
        // Nor does a deadline, a failure or a care team move it.
        assert!(advance(&acknowledged, 0, Reason::DeadlinePassed, "x", &ctx, T0 + 3 * SECOND).is_none());
        assert!(not_reached(&acknowledged, 0, "x", &ctx, T0).is_none());
        assert!(hand_back(&acknowledged, &[], &ctx, T0).is_none());
        let resolved = resolve(&t.after, "dr-primary", "safe", T0 + 4 * SECOND).unwrap().unwrap().after;
        assert!(hand_back(&resolved, &[], &ctx, T0).is_none());
        assert!(advance(&resolved, 0, Reason::DeadlinePassed, "x", &ctx, T0).is_none());
    }

    #[test]
    fn the_care_team_arriving_takes_the_alert_back_from_the_crisis_contact() {
        let rules = rules();
        let chain = team();
        let ctx = Context { chain: &chain, rules: &rules };
        let held = raised(pb::RiskLevel::High, &[]);
        let at = T0 + 30 * SECOND;
        let t = hand_back(&held, &[], &ctx, at).unwrap();
        assert_eq!((t.after.step, t.after.attempt, t.after.current_recipient.as_str()), (0, 1, "dr-primary"));
        assert_eq!(t.after.ack_deadline, Some(at + 15 * 60 * SECOND), "a fresh window for the primary");
        assert_eq!(
            t.announce,
            vec![
                Announcement::Notify { reason: Reason::CareTeamKnown, crisis_contact: false, previous_level: None },
                Announcement::HandedBack { crisis_contact: "on-call".to_owned() },
            ]
        );
        assert_eq!(t.timeline[0].kind, "handed_back");
        assert_eq!(t.timeline[0].actor, "on-call");

        // After a deadline passed with the crisis contact, the chain would be at the backup.
        let later = advance(&held, 0, Reason::DeadlinePassed, "late", &Context { chain: &[], rules: &rules }, at)
            .unwrap()
            .after;
        assert_eq!((later.step, later.current_recipient.as_str()), (1, "on-call"));
        let t = hand_back(&later, &[], &ctx, at + SECOND).unwrap();
        assert_eq!((t.after.step, t.after.attempt, t.after.current_recipient.as_str()), (1, 2, "dr-backup"));
        // Past the end of the chain it would have reached: the crisis contact keeps it.
        let one = vec!["dr-primary".to_owned()];
        assert!(hand_back(&later, &[], &Context { chain: &one, rules: &rules }, at).is_none());
    }

    #[test]
    fn a_chain_that_ran_out_is_not_handed_back_when_the_team_changes() {
        let rules = rules();
        let one = vec!["dr-primary".to_owned()];
        let first = raised(pb::RiskLevel::High, &one);
        let ctx = Context { chain: &one, rules: &rules };
        let contact = advance(&first, 0, Reason::DeadlinePassed, "late", &ctx, T0 + SECOND).unwrap().after;
        assert_eq!(contact.current_recipient, "on-call");
        let bigger = team();
        assert!(
            hand_back(&contact, &one, &Context { chain: &bigger, rules: &rules }, T0 + 2 * SECOND).is_none(),
            "the care team was known and did not acknowledge"
        );
        // A care team still unknown (an empty version) hands nothing back.
        let lone = raised(pb::RiskLevel::High, &[]);
        assert!(hand_back(&lone, &[], &Context { chain: &[], rules: &rules }, T0).is_none());
    }

    #[test]
    fn an_unprocessable_crisis_event_pages_only_the_crisis_contact_at_the_highest_level() {
        let rules = rules();
        let chain = team();
        let ctx = Context { chain: &chain, rules: &rules };
        let org: OrgId = "north".parse().unwrap();
        let t = unprocessable(EscalationId::new(), &org, &PatientId::new(), "k1", "unreadable", &ctx, T0);
        assert_eq!(t.after.dead_letter.as_deref(), Some("k1"));
        assert_eq!((t.after.level, t.after.current_recipient.as_str()), (pb::RiskLevel::Imminent, "on-call"));
        assert_eq!(t.after.ack_deadline, Some(T0 + 5 * 60 * SECOND), "the imminent window");
        assert_eq!(
            notify_of(&t),
            Some((Reason::Raised, true, None)),
            "the crisis contact, though a care team is known"
        );
        // A passing deadline pages the crisis contact again, never the care team.
        let again = advance(&t.after, 0, Reason::DeadlinePassed, "late", &ctx, T0 + 5 * 60 * SECOND).unwrap();
        assert_eq!((again.after.attempt, again.after.current_recipient.as_str()), (1, "on-call"));
        assert_eq!(notify_of(&again), Some((Reason::DeadlinePassed, true, None)));
        // Not reached: recorded, paged again at the deadline.
        let missed = not_reached(&t.after, 0, "no endpoint", &ctx, T0 + SECOND).unwrap();
        assert!(!missed.changes_row() && missed.announce.is_empty());
        // The care team arriving does not take it.
        assert!(hand_back(&t.after, &[], &ctx, T0 + SECOND).is_none());
        let acknowledged = acknowledge(&t.after, "on-call", "", T0 + SECOND).unwrap().unwrap();
        assert_eq!(acknowledged.after.state, State::Acknowledged);
    }

    #[test]
    fn acknowledging_and_resolving_follow_the_states() {
        let open = raised(pb::RiskLevel::High, &team());
        assert_eq!(
            resolve(&open, "dr", "done", T0).unwrap_err(),
            Refused("acknowledge the escalation first: resolving says how a human handled it".to_owned())
        );
        let t = acknowledge(&open, "dr-primary", "calling", T0 + 90 * SECOND).unwrap().unwrap();
        assert_eq!(t.after.state, State::Acknowledged);
        assert_eq!(t.after.ack_deadline, None);
        assert_eq!(t.timeline[0].detail, "acknowledged 90s after it was raised: calling");
        assert_eq!(acknowledge(&t.after, "dr", "", T0).unwrap(), None, "twice is once");
        let done = resolve(&t.after, "dr-primary", "safe", T0 + 100 * SECOND).unwrap().unwrap();
        assert_eq!(done.after.state, State::Resolved);
        assert_eq!(done.announce, vec![Announcement::Resolved]);
        assert!(acknowledge(&done.after, "dr", "", T0).is_err());
        assert_eq!(resolve(&done.after, "dr", "x", T0).unwrap(), None);
    }
}
