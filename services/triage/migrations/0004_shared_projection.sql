-- The careplans projection has one shape in every service (tandem-projections
-- writes it): patients keep their time zone, care-team members their role and
-- display name. Rows projected before this keep empty values until careplans
-- announces the patient or the team again.
ALTER TABLE patients ADD COLUMN time_zone TEXT NOT NULL DEFAULT '';
ALTER TABLE care_team_members ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE care_team_members ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
