-- Where people are reached. A webhook's signing secret is kept to sign with
-- (HMAC needs it); a verification code is kept only as a hash.
CREATE TABLE endpoints (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    channel TEXT NOT NULL,
    address TEXT NOT NULL,
    secret TEXT NOT NULL,
    verified_at BIGINT,
    code_hash TEXT NOT NULL,
    code_expires_at BIGINT,
    code_attempts BIGINT NOT NULL,
    quiet_hours_start TEXT NOT NULL,
    quiet_hours_end TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    registered_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (org_id, subject, channel, address)
);
CREATE INDEX endpoints_subject ON endpoints (org_id, subject);

-- One row per (escalation, step) alerted: the de-duplication key of alerts,
-- and whether the step was reached (delivered), not reached (failed) or
-- called off (cancelled).
CREATE TABLE alerts (
    escalation_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    level TEXT NOT NULL,
    ack_deadline BIGINT,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    PRIMARY KEY (escalation_id, step)
);

-- The durable delivery queue: one row per notification and endpoint. Its id
-- is the webhook-id, the same on every retry. A worker claims a row by
-- setting claim and claimed_until (a lease); a worker that dies leaves the
-- claim to expire. message holds the rendered content (never patient text).
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    purpose TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    escalation_id TEXT,
    step BIGINT,
    org_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    queued_at BIGINT NOT NULL,
    claim TEXT,
    claimed_until BIGINT,
    last_error TEXT NOT NULL,
    delivered_at BIGINT,
    UNIQUE (dedup_key, endpoint_id)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_escalation ON deliveries (escalation_id, step);

-- In-app notifications; streamed_at is set once a StreamInbox showed it.
CREATE TABLE inbox_notifications (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    streamed_at BIGINT
);
CREATE INDEX inbox_subject ON inbox_notifications (org_id, subject, seq);

-- Projections for reminders: patients (careplans' PatientEnrolled), their
-- plans (CarePlanChanged) and what they did (checkins' CheckInSubmitted).
CREATE TABLE patients (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    time_zone TEXT NOT NULL
);

CREATE TABLE care_plans (
    id TEXT PRIMARY KEY NOT NULL,
    patient_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    status TEXT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX care_plans_status ON care_plans (status, patient_id);

CREATE TABLE measures_done (
    patient_id TEXT NOT NULL,
    instrument TEXT NOT NULL,
    done_at BIGINT NOT NULL,
    PRIMARY KEY (patient_id, instrument)
);

CREATE TABLE tasks_done (
    patient_id TEXT NOT NULL,
    care_plan_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    done_at BIGINT NOT NULL,
    PRIMARY KEY (patient_id, care_plan_id, task_id)
);

-- One row per occurrence reminded: remind once per occurrence.
CREATE TABLE reminders (
    care_plan_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    occurrence_at BIGINT NOT NULL,
    patient_id TEXT NOT NULL,
    instrument TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (care_plan_id, item_id, occurrence_at)
);
