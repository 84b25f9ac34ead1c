-- An escalation opened because a crisis event could never be processed (a
-- dead letter) names that dead letter: its event id, or its topic, partition
-- and offset. One escalation per dead letter, however many consumer groups
-- dead-lettered the record; NULL for escalations of assessed risk.
ALTER TABLE escalations ADD COLUMN dead_letter TEXT;
CREATE UNIQUE INDEX escalations_dead_letter ON escalations (dead_letter);
