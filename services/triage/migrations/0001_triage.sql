-- Projections of careplans events: who the patient is and who is on the chain.
CREATE TABLE patients (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL
);

CREATE TABLE care_team_members (
    patient_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    clinician_id TEXT NOT NULL,
    PRIMARY KEY (patient_id, position)
);
CREATE INDEX care_team_members_clinician ON care_team_members (clinician_id);

CREATE TABLE care_team_versions (
    patient_id TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL
);

-- The patient's history as triage needs it.
CREATE TABLE phq9_scores (
    patient_id TEXT NOT NULL,
    check_in_id TEXT NOT NULL,
    total BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (patient_id, check_in_id)
);

CREATE TABLE engagement (
    patient_id TEXT PRIMARY KEY NOT NULL,
    missed_in_a_row BIGINT NOT NULL
);

-- Every assessment, with the rules that fired (a protobuf RiskAssessment).
CREATE TABLE assessments (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    assessed_at BIGINT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX assessments_patient ON assessments (patient_id, assessed_at, id);

-- Escalations: a persisted state machine. ack_deadline drives the scheduler.
CREATE TABLE escalations (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    first_level BIGINT NOT NULL,
    state TEXT NOT NULL,
    step BIGINT NOT NULL,
    current_recipient TEXT NOT NULL,
    ack_deadline BIGINT,
    raised_at BIGINT NOT NULL,
    acknowledged_at BIGINT,
    acknowledged_by TEXT,
    resolved_at BIGINT,
    outcome TEXT
);
CREATE INDEX escalations_patient_open ON escalations (patient_id, state);
CREATE INDEX escalations_deadline ON escalations (state, ack_deadline);
CREATE INDEX escalations_org ON escalations (org_id, state);

CREATE TABLE escalation_timeline (
    escalation_id TEXT NOT NULL REFERENCES escalations (id),
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (escalation_id, seq)
);

-- Rule configuration per org and per-patient overrides (protobuf TriageRules),
-- and the audit trail of every change.
CREATE TABLE org_rules (
    org_id TEXT PRIMARY KEY NOT NULL,
    body BYTEA NOT NULL
);

CREATE TABLE patient_overrides (
    patient_id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    body BYTEA NOT NULL
);

CREATE TABLE config_audit (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    actor_subject TEXT NOT NULL,
    actor_role TEXT NOT NULL,
    patient_id TEXT,
    before_rules BYTEA NOT NULL,
    after_rules BYTEA NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX config_audit_org ON config_audit (org_id, at, id);
