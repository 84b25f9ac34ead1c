-- Alerts are de-duplicated per (escalation, attempt) instead of per
-- (escalation, step): triage re-alerts the same step at a higher level, or
-- hands an alert back to the care team, under a new attempt. Rows written
-- before had one alert per step, so their attempt is their step.
-- dialect: postgres
ALTER TABLE alerts ADD COLUMN attempt BIGINT;
UPDATE alerts SET attempt = step;
ALTER TABLE alerts ALTER COLUMN attempt SET NOT NULL;
ALTER TABLE alerts DROP CONSTRAINT alerts_pkey;
ALTER TABLE alerts ADD PRIMARY KEY (escalation_id, attempt);
-- dialect: sqlite
CREATE TABLE alerts_by_attempt (
    escalation_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    step BIGINT NOT NULL,
    org_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    level TEXT NOT NULL,
    ack_deadline BIGINT,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    PRIMARY KEY (escalation_id, attempt)
);
INSERT INTO alerts_by_attempt (escalation_id, attempt, step, org_id, patient_id, recipient, level, ack_deadline,
    state, created_at, decided_at)
SELECT escalation_id, step, step, org_id, patient_id, recipient, level, ack_deadline, state, created_at, decided_at
FROM alerts;
DROP TABLE alerts;
ALTER TABLE alerts_by_attempt RENAME TO alerts;
-- dialect: all

ALTER TABLE deliveries ADD COLUMN attempt BIGINT;
UPDATE deliveries SET attempt = step WHERE escalation_id IS NOT NULL;
DROP INDEX deliveries_escalation;
CREATE INDEX deliveries_escalation ON deliveries (escalation_id, attempt);
