-- Every alert of an escalation is an attempt: each new step, each re-alert at
-- a higher level, each hand-back from the crisis contact to the care team.
-- Notifications de-duplicates on (escalation, attempt). Before this column
-- every step was alerted exactly once, so existing rows start at their step.
ALTER TABLE escalations ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
UPDATE escalations SET attempt = step;
