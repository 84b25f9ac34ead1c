//! The escalation engine: loads what the state machine
//! (`escalation.rs`) needs, writes the transition it returns (row,
//! timeline entries, events) in the caller's transaction, and tells the
//! relay, the deadline scheduler and worklist watchers after commit. Its
//! clock is injectable, so the whole machine runs in tests without waiting.

use std::sync::Arc;

use sqlx::{Any, Transaction};
use tandem_events::{Outbox, topics};
use tandem_proto::events::v1 as events;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::triage::v1 as pb;
use tandem_store::{ChangeFeed, Changes, from_unix_micros};
use tokio::sync::Notify;

use crate::clock::{Clock, SystemClock};
use crate::config::{TriageSettings, fill};
use crate::escalation::{self, Announcement, Context, Reason, Refused, Transition};
use crate::repo::{Escalation, Repo, RepoError, State, tx};

/// Why an acknowledgement or resolution was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// The escalation is not in a state that allows it.
    #[error("{0}")]
    NotAllowed(String),
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<sqlx::Error> for TransitionError {
    fn from(error: sqlx::Error) -> Self {
        TransitionError::Repo(error.into())
    }
}

impl From<TransitionError> for tandem_server::ServiceError {
    fn from(error: TransitionError) -> Self {
        match error {
            TransitionError::NotAllowed(why) => Self::precondition(why),
            TransitionError::Repo(error) => error.into(),
        }
    }
}

impl From<TransitionError> for tonic::Status {
    fn from(error: TransitionError) -> Self {
        tandem_server::ServiceError::from(error).into()
    }
}

impl From<Refused> for TransitionError {
    fn from(refused: Refused) -> Self {
        TransitionError::NotAllowed(refused.0)
    }
}

/// What is known of a crisis event that can never be processed: ids and
/// where it sat, never its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFacts {
    /// The dead letter's identity across consumer groups
    /// ([`tandem_events::DeadLetter::key`]).
    pub key: String,
    /// The record's key: the patient's id, if it is one.
    pub patient: Option<String>,
    /// The org, from the envelope or the record's header.
    pub org: Option<String>,
    /// The event id, if readable.
    pub event_id: Option<String>,
    /// The event type, if readable.
    pub event_type: Option<String>,
    /// Where the record sat.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The consumer group that dead-lettered it.
    pub group: String,
}

impl From<&tandem_events::DeadLetter> for DeadLetterFacts {
    fn from(letter: &tandem_events::DeadLetter) -> Self {
        Self {
            key: letter.key(),
            patient: letter.patient_key.clone(),
            org: letter.org.clone(),
            event_id: letter.event_id.clone(),
            event_type: letter.event_type.clone(),
            topic: letter.topic.clone(),
            partition: letter.partition,
            offset: letter.offset,
            group: letter.group.clone(),
        }
    }
}

impl DeadLetterFacts {
    /// The facts another service announced (`CrisisEventDeadLettered`).
    pub fn announced(event: &events::EventEnvelope, announced: &events::CrisisEventDeadLettered) -> Self {
        let text = |value: &str| (!value.is_empty()).then(|| value.to_owned());
        Self {
            key: announced.key.clone(),
            patient: event.patient_id.as_ref().map(|id| id.value.clone()),
            org: event.org_id.as_ref().and_then(|org| text(&org.value)),
            event_id: text(&announced.event_id),
            event_type: text(&announced.event_type),
            topic: announced.topic.clone(),
            partition: announced.partition,
            offset: announced.offset,
            group: announced.consumer_group.clone(),
        }
    }
}

/// Now by the system clock, in unix microseconds, for records outside the
/// state machine (configuration audit).
pub fn now_micros() -> i64 {
    SystemClock.now()
}

/// Escalations: their transitions, their events, and who to wake.
#[derive(Debug, Clone)]
pub struct Engine {
    repo: Repo,
    outbox: Outbox,
    settings: Arc<TriageSettings>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    changes: ChangeFeed,
}

impl Engine {
    /// An engine over the service's store and outbox, on the system clock.
    pub fn new(repo: Repo, outbox: Outbox, settings: Arc<TriageSettings>) -> Self {
        Self::with_clock(repo, outbox, settings, Arc::new(SystemClock))
    }

    /// An engine deciding by `clock`.
    pub fn with_clock(repo: Repo, outbox: Outbox, settings: Arc<TriageSettings>, clock: Arc<dyn Clock>) -> Self {
        let changes = ChangeFeed::new(repo.store(), "worklist");
        Self { repo, outbox, settings, clock, wake: Arc::new(Notify::new()), changes }
    }

    /// Now by the engine's clock (unix micros).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The same engine reading and writing through `repo` (e.g. on the
    /// API's own pool), sharing its wake-ups and change announcements.
    pub fn with_repo(&self, repo: Repo) -> Self {
        Self { repo, ..self.clone() }
    }

    /// The repository.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The deadline scheduler's wake-up.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Announcements of orgs whose worklist changed, for worklist watchers
    /// (keyed by org id; from other replicas too, once listening).
    pub fn subscribe(&self) -> Changes {
        self.changes.subscribe()
    }

    /// The worklist change feed (to run its cross-process listener).
    pub fn changes(&self) -> &ChangeFeed {
        &self.changes
    }

    /// Tells the relay, the scheduler and watchers about committed changes.
    pub fn after_commit(&self, changed: &[(OrgId, EscalationId)]) {
        self.outbox.notify();
        self.wake.notify_one();
        if !changed.is_empty() {
            tracing::debug!(changed = changed.len(), "escalations changed");
        }
        for (org, _) in changed {
            self.changes.changed(org.as_str());
        }
    }

    /// Wakes the watchers of `org`'s worklist (after a commit that may have
    /// changed what they see, such as a care team).
    pub fn org_changed(&self, org: &OrgId) {
        self.changes.changed(org.as_str());
    }

    /// The rules that apply to the patient: the org's (or the defaults) with
    /// the patient's overrides.
    pub async fn rules_for(
        &self,
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        patient: Option<&PatientId>,
    ) -> Result<pb::TriageRules, RepoError> {
        let defaults = self.settings.default_rules();
        let org_rules = tx::org_rules(tx, org).await?.map(|rules| fill(&rules, &defaults)).unwrap_or(defaults);
        let Some(patient) = patient else { return Ok(org_rules) };
        let overrides = tx::patient_overrides(tx, patient).await?.unwrap_or_default();
        Ok(pb::TriageRules {
            deterioration_points: if overrides.deterioration_points == 0 {
                org_rules.deterioration_points
            } else {
                overrides.deterioration_points
            },
            disengagement_missed: if overrides.disengagement_missed == 0 {
                org_rules.disengagement_missed
            } else {
                overrides.disengagement_missed
            },
            ..org_rules
        })
    }

    /// The chain and the rules of a patient, for the state machine.
    async fn known(
        &self,
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        patient: &PatientId,
    ) -> Result<(Vec<String>, pb::TriageRules), RepoError> {
        let rules = self.rules_for(tx, org, Some(patient)).await?;
        let chain = tx::chain(tx, patient).await?;
        Ok((chain, rules))
    }

    /// Writes a transition in `tx`: the row (only if it is still as it was
    /// read), its timeline entries and its events. `false` when the row
    /// changed meanwhile and nothing was written.
    async fn apply(&self, tx: &mut Transaction<'_, Any>, transition: &Transition) -> Result<bool, RepoError> {
        let now = self.now();
        let after = &transition.after;
        match &transition.before {
            None => tx::insert_escalation(tx, after).await?,
            Some(before) if transition.changes_row() => {
                if !tx::update_escalation(tx, after, before).await? {
                    return Ok(false);
                }
            }
            Some(_) => {}
        }
        for entry in &transition.timeline {
            tx::add_timeline(tx, &after.id, now, entry.kind, &entry.actor, &entry.detail).await?;
        }
        for announced in &transition.announce {
            self.emit(tx, after, announced).await?;
        }
        Ok(true)
    }

    async fn emit(
        &self,
        tx: &mut Transaction<'_, Any>,
        escalation: &Escalation,
        announced: &Announcement,
    ) -> Result<(), RepoError> {
        let mut changed =
            events::EscalationChanged { escalation: Some(self.to_pb(escalation, Vec::new())), ..Default::default() };
        changed.set_kind(announced.kind());
        match announced {
            Announcement::Notify { reason, crisis_contact, previous_level } => {
                changed.set_alert_reason(reason.to_pb());
                changed.to_crisis_contact = *crisis_contact;
                if *crisis_contact {
                    changed.crisis_contact = escalation.current_recipient.clone();
                }
                changed.set_previous_level(previous_level.unwrap_or(pb::RiskLevel::Unspecified));
            }
            Announcement::HandedBack { crisis_contact } => changed.crisis_contact = crisis_contact.clone(),
            Announcement::LevelRaised { from } => changed.set_previous_level(*from),
            Announcement::Raised | Announcement::Acknowledged | Announcement::Resolved => {}
        }
        // Consumers of an older version read the strings.
        let payload = Payload::EscalationChanged(changed.with_legacy_fields());
        let event = self.outbox.envelope(&escalation.org, &escalation.patient, payload);
        self.outbox.enqueue(tx, topics::TRIAGE, &event).await?;
        // Watchers in other replicas wake when this commits.
        self.changes.announce(tx, escalation.org.as_str()).await?;
        Ok(())
    }

    /// The wire form of an escalation.
    pub fn to_pb(&self, e: &Escalation, timeline: Vec<pb::TimelineEntry>) -> pb::Escalation {
        pb::Escalation {
            id: Some(e.id.into()),
            patient_id: Some(e.patient.into()),
            level: e.level as i32,
            state: e.state.to_pb() as i32,
            step: e.step,
            current_recipient: e.current_recipient.clone(),
            ack_deadline: e.ack_deadline.map(|at| from_unix_micros(at).into()),
            raised_at: Some(from_unix_micros(e.raised_at).into()),
            timeline,
            attempt: Some(e.attempt),
        }
    }

    /// Raises an escalation for the patient at `level`, or joins the open
    /// one (raising its level and re-alerting its holder if higher) instead
    /// of paging again. Returns the escalation, or `None` for levels that do
    /// not escalate.
    pub async fn raise_or_join(
        &self,
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        patient: &PatientId,
        level: pb::RiskLevel,
        why: &str,
    ) -> Result<Option<Escalation>, RepoError> {
        let (chain, rules) = self.known(tx, org, patient).await?;
        let ctx = Context { chain: &chain, rules: &rules };
        let now = self.now();
        if crate::config::ack_window(&rules, level).is_none() {
            return Ok(None);
        }
        let transition = match tx::open_escalation(tx, patient).await? {
            Some(open) => escalation::join(&open, level, why, &ctx, now),
            None => match escalation::raise(EscalationId::new(), org, patient, level, why, &ctx, now) {
                Some(raised) => raised,
                None => return Ok(None),
            },
        };
        if !self.apply(tx, &transition).await? {
            // Acknowledged (say) between the read and the write: the caller
            // retries the event against what is stored now.
            return Err(RepoError::Conflict(format!("escalation {}", transition.after.id)));
        }
        if transition.alert() == Some(Reason::LevelRaised) {
            tracing::warn!(
                escalation_id = %transition.after.id,
                level = transition.after.level.as_str_name(),
                attempt = transition.after.attempt,
                "level raised; the holder is alerted again at the new level"
            );
        }
        Ok(Some(transition.after))
    }

    /// A crisis event that can never be processed was dead-lettered (by
    /// triage's consumer, or by another service's, which announces it): the
    /// org's crisis contact is paged through an escalation of its own (see
    /// [`escalation::unprocessable`]), once per dead letter however many
    /// groups report it. `None` when it was opened before.
    /// [`RepoError::Unpageable`] when there is nobody to page or no patient
    /// or org to page about.
    pub async fn dead_lettered(
        &self,
        tx: &mut Transaction<'_, Any>,
        facts: &DeadLetterFacts,
    ) -> Result<Option<Escalation>, RepoError> {
        debug_assert!(!facts.key.is_empty());
        if let Some(paged) = tx::dead_letter_escalation(tx, &facts.key).await? {
            // Another group met the same record: recorded, not paged again.
            let detail = format!("the same dead letter, reported by {}", facts.group);
            tx::add_timeline(tx, &paged.id, self.now(), "joined", "triage", &detail).await?;
            tracing::info!(key = %facts.key, group = %facts.group, "dead letter already paged; not paged again");
            return Ok(None);
        }
        let patient: PatientId = facts
            .patient
            .as_deref()
            .and_then(|key| key.parse().ok())
            .ok_or_else(|| RepoError::Unpageable(format!("dead letter {} names no patient", facts.key)))?;
        // Careplans' word on the patient's org first, then the record's.
        let org = match tx::patient_org(tx, &patient).await? {
            Some(org) => org,
            None => facts.org.as_deref().and_then(|org| org.parse().ok()).ok_or_else(|| {
                RepoError::Unpageable(format!("dead letter {}: the org of patient {patient} is not known", facts.key))
            })?,
        };
        let (chain, rules) = self.known(tx, &org, &patient).await?;
        if rules.crisis_contact.trim().is_empty() {
            return Err(RepoError::Unpageable(format!("org {org} names no crisis contact")));
        }
        let ctx = Context { chain: &chain, rules: &rules };
        let why = format!(
            "unprocessable crisis event: {} {} on {} (partition {}, offset {}) can never be processed by {} and was dead-lettered; what it said is unknown, so the crisis contact is paged at the highest level",
            facts.event_type.as_deref().unwrap_or("an event of unknown type"),
            facts.event_id.as_deref().unwrap_or("without a readable id"),
            facts.topic,
            facts.partition,
            facts.offset,
            facts.group,
        );
        let transition =
            escalation::unprocessable(EscalationId::new(), &org, &patient, &facts.key, &why, &ctx, self.now());
        self.apply(tx, &transition).await?;
        tracing::error!(
            alert = "crisis_dead_letter_paged",
            escalation_id = %transition.after.id,
            key = %facts.key,
            patient = %patient,
            recipient = %transition.after.current_recipient,
            "a dead-lettered crisis event pages the org's crisis contact"
        );
        Ok(Some(transition.after))
    }

    /// Re-routes a notified escalation whose alert `attempt` was not
    /// acknowledged in time to the next step. Does nothing if the
    /// escalation moved on meanwhile.
    pub async fn advance(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: &EscalationId,
        attempt: u32,
        detail: &str,
    ) -> Result<Option<Escalation>, RepoError> {
        let Some(current) = tx::escalation(tx, id).await? else { return Ok(None) };
        let (chain, rules) = self.known(tx, &current.org, &current.patient).await?;
        let ctx = Context { chain: &chain, rules: &rules };
        let Some(transition) = escalation::advance(&current, attempt, Reason::DeadlinePassed, detail, &ctx, self.now())
        else {
            return Ok(None);
        };
        Ok(self.apply(tx, &transition).await?.then_some(transition.after))
    }

    /// The alert `attempt` reached nobody: within the care team the next
    /// step is alerted at once; the crisis contact is paged again at the
    /// deadline (see [`escalation::not_reached`]).
    pub async fn not_reached(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: &EscalationId,
        attempt: u32,
        detail: &str,
    ) -> Result<Option<Escalation>, RepoError> {
        let Some(current) = tx::escalation(tx, id).await? else { return Ok(None) };
        let (chain, rules) = self.known(tx, &current.org, &current.patient).await?;
        let ctx = Context { chain: &chain, rules: &rules };
        let Some(transition) = escalation::not_reached(&current, attempt, detail, &ctx, self.now()) else {
            return Ok(None);
        };
        if transition.alert().is_none() {
            tracing::error!(
                escalation_id = %id,
                alert = "crisis_contact_unreachable",
                "the org's crisis contact could not be reached on any channel; it is paged again at the deadline"
            );
        }
        if !self.apply(tx, &transition).await? {
            return Err(RepoError::Conflict(format!("escalation {id}")));
        }
        Ok(Some(transition.after))
    }

    /// The patient's care team changed from `known_before` to what is
    /// stored now: an alert the crisis contact holds only because no care
    /// team was known goes back to the care team (see
    /// [`escalation::hand_back`]).
    pub async fn care_team_changed(
        &self,
        tx: &mut Transaction<'_, Any>,
        patient: &PatientId,
        known_before: &[String],
    ) -> Result<Option<Escalation>, RepoError> {
        let Some(open) = tx::open_escalation(tx, patient).await? else { return Ok(None) };
        let (chain, rules) = self.known(tx, &open.org, patient).await?;
        let ctx = Context { chain: &chain, rules: &rules };
        let Some(transition) = escalation::hand_back(&open, known_before, &ctx, self.now()) else {
            return Ok(None);
        };
        if !self.apply(tx, &transition).await? {
            return Err(RepoError::Conflict(format!("escalation {}", open.id)));
        }
        tracing::warn!(
            escalation_id = %open.id,
            step = transition.after.step,
            "care team known: alert handed back from the crisis contact"
        );
        Ok(Some(transition.after))
    }

    /// A human acknowledges: the chain stops.
    pub async fn acknowledge(&self, id: &EscalationId, who: &str, note: &str) -> Result<Escalation, TransitionError> {
        let decide = |current: &Escalation, now| escalation::acknowledge(current, who, note, now);
        self.human(id, decide).await
    }

    /// Closes an acknowledged escalation with an outcome.
    pub async fn resolve(&self, id: &EscalationId, who: &str, outcome: &str) -> Result<Escalation, TransitionError> {
        let decide = |current: &Escalation, now| escalation::resolve(current, who, outcome, now);
        self.human(id, decide).await
    }

    /// A transition a person asked for, in a transaction of its own.
    async fn human(
        &self,
        id: &EscalationId,
        decide: impl FnOnce(&Escalation, i64) -> Result<Option<Transition>, Refused>,
    ) -> Result<Escalation, TransitionError> {
        let mut tx = self.repo.store().begin_write().await.map_err(RepoError::from)?;
        let Some(current) = tx::escalation(&mut tx, id).await? else {
            return Err(TransitionError::NotAllowed("no such escalation".to_owned()));
        };
        let Some(transition) = decide(&current, self.now())? else { return Ok(current) };
        if !self.apply(&mut tx, &transition).await? {
            return Err(TransitionError::NotAllowed(
                "the escalation changed meanwhile; reload it and try again".to_owned(),
            ));
        }
        tx.commit().await?;
        self.after_commit(&[(transition.after.org.clone(), transition.after.id)]);
        if let (false, Some(at)) = (current.state == State::Acknowledged, transition.after.acknowledged_at) {
            let waited = at.saturating_sub(transition.after.raised_at) as f64 / 1e6;
            tandem_telemetry::metrics::acknowledged(transition.after.level.as_str_name(), waited);
        }
        Ok(transition.after)
    }

    /// Re-routes every escalation whose deadline has passed; returns how many.
    pub async fn run_due(&self) -> Result<usize, RepoError> {
        let due = self.repo.due(self.now()).await?;
        let mut advanced = 0;
        for (id, attempt) in due {
            let mut tx = self.repo.store().begin_write().await?;
            let moved = self.advance(&mut tx, &id, attempt, "no acknowledgement before the deadline").await?;
            tx.commit().await?;
            if let Some(next) = moved {
                tracing::warn!(escalation_id = %id, step = next.step, level = next.level.as_str_name(), "acknowledgement deadline passed; re-routed");
                self.after_commit(&[(next.org.clone(), next.id)]);
                advanced += 1;
            }
        }
        Ok(advanced)
    }
}
