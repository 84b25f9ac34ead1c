-- Occurrences of measure schedules that expired unanswered, reported once.
CREATE TABLE missed_measures (
    care_plan_id TEXT NOT NULL,
    schedule_id TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    patient_id TEXT NOT NULL,
    reported_at BIGINT NOT NULL,
    PRIMARY KEY (care_plan_id, schedule_id, due_at)
);
