//! The escalation state machine: raised → notified (step k of the care-team
//! chain) → acknowledged → resolved. A passing deadline, or a notification
//! that reached nobody, re-routes to the next person in the chain and past
//! its end to the org's crisis contact, again and again until a human
//! acknowledges. Every change is a row, a timeline entry and an event,
//! committed together.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::{Any, Transaction};
use tandem_events::{Outbox, topics};
use tandem_proto::events::v1 as events;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{EscalationId, OrgId, PatientId};
use tandem_proto::triage::v1 as pb;
use tandem_store::{ChangeFeed, Changes, from_unix_micros, unix_micros};
use tokio::sync::Notify;

use crate::config::{TriageSettings, ack_window, fill};
use crate::repo::{Escalation, Repo, RepoError, State, tx};

/// Now, in unix microseconds.
pub fn now_micros() -> i64 {
    unix_micros(SystemTime::now())
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

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

/// Escalations: their transitions, their events, and who to wake.
#[derive(Debug, Clone)]
pub struct Engine {
    repo: Repo,
    outbox: Outbox,
    settings: Arc<TriageSettings>,
    wake: Arc<Notify>,
    changes: ChangeFeed,
}

impl Engine {
    /// An engine over the service's store and outbox.
    pub fn new(repo: Repo, outbox: Outbox, settings: Arc<TriageSettings>) -> Self {
        let changes = ChangeFeed::new(repo.store(), "worklist");
        Self { repo, outbox, settings, wake: Arc::new(Notify::new()), changes }
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

    async fn emit(
        &self,
        tx: &mut Transaction<'_, Any>,
        escalation: &Escalation,
        change: &str,
        crisis_contact: &str,
    ) -> Result<(), RepoError> {
        let payload = Payload::EscalationChanged(events::EscalationChanged {
            escalation: Some(self.to_pb(escalation, Vec::new())),
            change: change.to_owned(),
            crisis_contact: crisis_contact.to_owned(),
        });
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
        }
    }

    /// Who step `step` alerts: the chain's member, or past its end the
    /// org's crisis contact.
    fn recipient(chain: &[String], step: u32, rules: &pb::TriageRules) -> (String, bool) {
        match chain.get(step as usize) {
            Some(member) => (member.clone(), false),
            None => (rules.crisis_contact.clone(), true),
        }
    }

    /// Raises an escalation for the patient at `level`, or joins the open
    /// one (raising its level if higher) instead of paging again. Returns
    /// the escalation, or `None` for levels that do not escalate.
    pub async fn raise_or_join(
        &self,
        tx: &mut Transaction<'_, Any>,
        org: &OrgId,
        patient: &PatientId,
        level: pb::RiskLevel,
        why: &str,
        now: i64,
    ) -> Result<Option<Escalation>, RepoError> {
        let rules = self.rules_for(tx, org, Some(patient)).await?;
        let Some(window) = ack_window(&rules, level) else { return Ok(None) };
        if let Some(open) = tx::open_escalation(tx, patient).await? {
            tx::add_timeline(tx, &open.id, now, "joined", "triage", why).await?;
            if (level as i32) <= (open.level as i32) {
                return Ok(Some(open));
            }
            let mut raised = open.clone();
            raised.level = level;
            if raised.state == State::Notified {
                // A higher level shortens the current step's deadline.
                let sooner = now + micros(window);
                raised.ack_deadline = Some(raised.ack_deadline.map_or(sooner, |at| at.min(sooner)));
            }
            if tx::update_escalation(tx, &raised, &open).await? {
                let detail = format!("level raised from {} to {}", open.level.as_str_name(), level.as_str_name());
                tx::add_timeline(tx, &raised.id, now, "level_raised", "triage", &detail).await?;
                self.emit(tx, &raised, "level_raised", "").await?;
            }
            return Ok(Some(raised));
        }
        let chain = tx::chain(tx, patient).await?;
        let (recipient, past_chain) = Self::recipient(&chain, 0, &rules);
        let escalation = Escalation {
            id: EscalationId::new(),
            org: org.clone(),
            patient: *patient,
            level,
            first_level: level,
            state: State::Notified,
            step: 0,
            current_recipient: recipient.clone(),
            ack_deadline: Some(now + micros(window)),
            raised_at: now,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            outcome: None,
        };
        tx::insert_escalation(tx, &escalation).await?;
        tx::add_timeline(tx, &escalation.id, now, "raised", "triage", why).await?;
        let detail = if past_chain { "no care team: the org's crisis contact" } else { "step 1 of the care team" };
        tx::add_timeline(tx, &escalation.id, now, "notify", &recipient, detail).await?;
        self.emit(tx, &escalation, "raised", "").await?;
        let crisis_contact = if past_chain { recipient.as_str() } else { "" };
        self.emit(tx, &escalation, "notify", crisis_contact).await?;
        Ok(Some(escalation))
    }

    /// Re-routes a notified escalation whose step `expected_step` was not
    /// acknowledged in time (or could not be reached) to the next step.
    /// Does nothing if the escalation moved on meanwhile.
    pub async fn advance(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: &EscalationId,
        expected_step: u32,
        kind: &str,
        detail: &str,
        now: i64,
    ) -> Result<Option<Escalation>, RepoError> {
        let Some(current) = tx::escalation(tx, id).await? else { return Ok(None) };
        if current.state != State::Notified || current.step != expected_step {
            return Ok(None);
        }
        let rules = self.rules_for(tx, &current.org, Some(&current.patient)).await?;
        let window = ack_window(&rules, current.level).unwrap_or(Duration::from_secs(300));
        let chain = tx::chain(tx, &current.patient).await?;
        let step = current.step + 1;
        let (recipient, past_chain) = Self::recipient(&chain, step, &rules);
        let next = Escalation {
            step,
            current_recipient: recipient.clone(),
            ack_deadline: Some(now + micros(window)),
            ..current.clone()
        };
        if !tx::update_escalation(tx, &next, &current).await? {
            return Ok(None);
        }
        tx::add_timeline(tx, id, now, kind, &current.current_recipient, detail).await?;
        let where_to = if past_chain {
            "past the care team: the org's crisis contact".to_owned()
        } else {
            format!("step {} of the care team", step + 1)
        };
        tx::add_timeline(tx, id, now, "notify", &recipient, &where_to).await?;
        let crisis_contact = if past_chain { recipient.as_str() } else { "" };
        self.emit(tx, &next, "notify", crisis_contact).await?;
        Ok(Some(next))
    }

    /// The alert of step `step` reached nobody. Within the care team that
    /// moves the escalation on at once; past its end (the crisis contact)
    /// there is no one further, so it is recorded loudly and the deadline
    /// pages the crisis contact again, rather than paging in a tight loop.
    pub async fn not_reached(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: &EscalationId,
        step: u32,
        detail: &str,
        now: i64,
    ) -> Result<Option<Escalation>, RepoError> {
        let Some(current) = tx::escalation(tx, id).await? else { return Ok(None) };
        if current.state != State::Notified || current.step != step {
            return Ok(None);
        }
        let chain = tx::chain(tx, &current.patient).await?;
        if (step as usize) < chain.len() {
            return self.advance(tx, id, step, "not_reached", detail, now).await;
        }
        tracing::error!(
            escalation_id = %id,
            alert = "crisis_contact_unreachable",
            "the org's crisis contact could not be reached on any channel; it is paged again at the deadline"
        );
        tx::add_timeline(tx, id, now, "not_reached", &current.current_recipient, detail).await?;
        Ok(Some(current))
    }

    /// A human acknowledges: the chain stops.
    pub async fn acknowledge(&self, id: &EscalationId, who: &str, note: &str) -> Result<Escalation, TransitionError> {
        let mut tx = self.repo.store().begin_write().await.map_err(RepoError::from)?;
        let Some(current) = tx::escalation(&mut tx, id).await? else {
            return Err(TransitionError::NotAllowed("no such escalation".to_owned()));
        };
        match current.state {
            State::Acknowledged => return Ok(current),
            State::Resolved => {
                return Err(TransitionError::NotAllowed("the escalation is already resolved".to_owned()));
            }
            State::Raised | State::Notified => {}
        }
        let now = now_micros();
        let acknowledged = Escalation {
            state: State::Acknowledged,
            ack_deadline: None,
            acknowledged_at: Some(now),
            acknowledged_by: Some(who.to_owned()),
            ..current.clone()
        };
        if !tx::update_escalation(&mut tx, &acknowledged, &current).await? {
            return Err(TransitionError::NotAllowed(
                "the escalation changed meanwhile; reload it and try again".to_owned(),
            ));
        }
        let seconds = (now - current.raised_at) as f64 / 1e6;
        let detail = if note.is_empty() {
            format!("acknowledged {seconds:.0}s after it was raised")
        } else {
            format!("acknowledged {seconds:.0}s after it was raised: {note}")
        };
        tx::add_timeline(&mut tx, id, now, "acknowledged", who, &detail).await?;
        self.emit(&mut tx, &acknowledged, "acknowledged", "").await?;
        tx.commit().await?;
        self.after_commit(&[(acknowledged.org.clone(), acknowledged.id)]);
        Ok(acknowledged)
    }

    /// Closes an acknowledged escalation with an outcome.
    pub async fn resolve(&self, id: &EscalationId, who: &str, outcome: &str) -> Result<Escalation, TransitionError> {
        let mut tx = self.repo.store().begin_write().await.map_err(RepoError::from)?;
        let Some(current) = tx::escalation(&mut tx, id).await? else {
            return Err(TransitionError::NotAllowed("no such escalation".to_owned()));
        };
        match current.state {
            State::Resolved => return Ok(current),
            State::Raised | State::Notified => {
                return Err(TransitionError::NotAllowed(
                    "acknowledge the escalation first: resolving says how a human handled it".to_owned(),
                ));
            }
            State::Acknowledged => {}
        }
        let now = now_micros();
        let resolved = Escalation {
            state: State::Resolved,
            resolved_at: Some(now),
            outcome: Some(outcome.to_owned()),
            ..current.clone()
        };
        if !tx::update_escalation(&mut tx, &resolved, &current).await? {
            return Err(TransitionError::NotAllowed(
                "the escalation changed meanwhile; reload it and try again".to_owned(),
            ));
        }
        tx::add_timeline(&mut tx, id, now, "resolved", who, outcome).await?;
        self.emit(&mut tx, &resolved, "resolved", "").await?;
        tx.commit().await?;
        self.after_commit(&[(resolved.org.clone(), resolved.id)]);
        Ok(resolved)
    }

    /// Re-routes every escalation whose deadline has passed; returns how many.
    pub async fn run_due(&self) -> Result<usize, RepoError> {
        let now = now_micros();
        let due = self.repo.due(now).await?;
        let mut advanced = 0;
        for (id, step) in due {
            let mut tx = self.repo.store().begin_write().await?;
            let moved = self
                .advance(&mut tx, &id, step, "deadline_passed", "no acknowledgement before the deadline", now)
                .await?;
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
