-- +goose Up
-- Appends are fenced by the events' primary key (kind, id, seq) and the
-- heads each process knows (see pgstore's doc), no longer by a head row
-- that every append updated: that UPDATE doubled the time of a group
-- commit. A stream's last sequence number is its last event's.
--
-- streams keeps a row per stream ever written (its first append, even one
-- of records or a mark only, writes it; store copy lists the streams from
-- it) and the active mark. Existing rows stay valid as they are.
ALTER TABLE streams DROP COLUMN last_seq;

-- +goose Down
ALTER TABLE streams ADD COLUMN last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0);
UPDATE streams s SET last_seq = e.last
FROM (SELECT kind, id, max(seq) AS last FROM events GROUP BY kind, id) e
WHERE s.kind = e.kind AND s.id = e.id;
ALTER TABLE streams ALTER COLUMN last_seq DROP DEFAULT;
