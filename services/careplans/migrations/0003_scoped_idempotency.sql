-- Idempotency keys of care plans are scoped to the patient (a key reused for
-- another patient must never replay that patient's plan), and each remembers
-- a fingerprint of its request so that reuse with a different body is a
-- conflict. Existing keys move into the patient's scope.
ALTER TABLE care_plans ADD COLUMN request_hash TEXT;
UPDATE care_plans SET idempotency_key = patient_id || '/' || idempotency_key;
