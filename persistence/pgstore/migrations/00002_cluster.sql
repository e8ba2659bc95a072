-- +goose Up
-- A cluster's nodes share one database: the secrets they must hold alike,
-- and which node holds each transport session.

-- Secrets every node uses alike (the API token, the download token key, the
-- download TLS certificate): sealed (AES-256-GCM) under the seal key, like
-- device credentials, and written once, by the first node that needs each.
CREATE TABLE secrets (
    name   text COLLATE "C" PRIMARY KEY,
    sealed bytea NOT NULL
);

-- The node that holds a session: its advertised address ('' for sessions
-- every node shares, such as download handles, and for a node alone).
ALTER TABLE sessions ADD COLUMN node text COLLATE "C" NOT NULL DEFAULT '';
CREATE INDEX sessions_node ON sessions (node, transport, id);

-- +goose Down
DROP INDEX sessions_node;
ALTER TABLE sessions DROP COLUMN node;
DROP TABLE secrets;
