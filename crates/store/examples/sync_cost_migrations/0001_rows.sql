-- One table of small rows, for the commit-cost measurement.
CREATE TABLE rows (id BIGINT PRIMARY KEY NOT NULL, body TEXT NOT NULL);
