-- Alerts are de-duplicated per (escalation, attempt) instead of per
-- (escalation, step): triage re-alerts the same step at a higher level, or
-- hands an alert back to the care team, under a new attempt. Rows written
-- before had one alert per step, so their attempt is their step.
ALTER TABLE alerts ADD COLUMN attempt BIGINT;
UPDATE alerts SET attempt = step;
ALTER TABLE alerts ALTER COLUMN attempt SET NOT NULL;
ALTER TABLE alerts DROP CONSTRAINT alerts_pkey;
ALTER TABLE alerts ADD PRIMARY KEY (escalation_id, attempt);

ALTER TABLE deliveries ADD COLUMN attempt BIGINT;
UPDATE deliveries SET attempt = step WHERE escalation_id IS NOT NULL;
DROP INDEX deliveries_escalation;
CREATE INDEX deliveries_escalation ON deliveries (escalation_id, attempt);
