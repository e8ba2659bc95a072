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
-- every node shares, such as download handles, and for a node alone). No
-- index of its own: sessions are written on the hot path (a download
-- handle per LwM2M download), read by node only at a node's start and when
-- a node's sessions are dropped, which the primary key (transport, id) and
-- a filter serve.
ALTER TABLE sessions ADD COLUMN node text COLLATE "C" NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE sessions DROP COLUMN node;
DROP TABLE secrets;
