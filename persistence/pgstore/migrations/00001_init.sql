-- +goose Up
-- The first schema of otafleet's PostgreSQL store. IDs are text in the C
-- collation so that they sort in byte order, as the persistence interfaces
-- list them; times are Unix nanoseconds (0: unset); event, snapshot and
-- record values are persistence envelopes (format, CRC-32C, type, version,
-- time, payload).

-- The head of every stream ever written: its last sequence number (the
-- fence every append checks and moves) and its active mark.
CREATE TABLE streams (
    kind     text COLLATE "C" NOT NULL,
    id       text COLLATE "C" NOT NULL,
    last_seq bigint NOT NULL CHECK (last_seq >= 0),
    active   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (kind, id)
);
CREATE INDEX streams_active ON streams (kind, id) WHERE active;

-- Events: the unique (kind, id, seq) is the second fence, should two
-- writers ever pass the head check.
CREATE TABLE events (
    kind text COLLATE "C" NOT NULL,
    id   text COLLATE "C" NOT NULL,
    seq  bigint NOT NULL CHECK (seq > 0),
    body bytea NOT NULL,
    PRIMARY KEY (kind, id, seq)
);

CREATE TABLE snapshots (
    kind text COLLATE "C" NOT NULL,
    id   text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (kind, id)
);

-- A stream's state area: keys are any bytes, in byte order.
CREATE TABLE records (
    kind text COLLATE "C" NOT NULL,
    id   text COLLATE "C" NOT NULL,
    key  bytea NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (kind, id, key)
);

CREATE TABLE products (
    id                 text COLLATE "C" PRIMARY KEY,
    name               text NOT NULL,
    protocol           integer NOT NULL,
    software_pcp       boolean NOT NULL,
    skip_version_check boolean NOT NULL,
    lwm2m_security     integer NOT NULL,
    created            bigint NOT NULL
);

-- Credentials are sealed (AES-256-GCM) under a key that is not in the
-- database; NULL: none.
CREATE TABLE devices (
    id            text COLLATE "C" PRIMARY KEY,
    product_id    text COLLATE "C" NOT NULL REFERENCES products (id),
    sealed_secret bytea,
    sealed_psk    bytea,
    created       bigint NOT NULL
);
CREATE INDEX devices_product ON devices (product_id, id);

CREATE TABLE groups (
    id         text COLLATE "C" PRIMARY KEY,
    name       text NOT NULL,
    device_ids text[] NOT NULL,
    created    bigint NOT NULL
);

CREATE TABLE packages (
    id              text COLLATE "C" PRIMARY KEY,
    product_id      text COLLATE "C" NOT NULL REFERENCES products (id),
    type            integer NOT NULL,
    version         text NOT NULL,
    source_versions text[] NOT NULL,
    file_name       text NOT NULL,
    size            bigint NOT NULL,
    sha256          bytea NOT NULL,
    description     text NOT NULL,
    custom_info     text NOT NULL,
    omit_sign       boolean NOT NULL,
    segment_size    bigint NOT NULL,
    check_code      bigint NOT NULL,
    created         bigint NOT NULL
);
CREATE INDEX packages_product ON packages (product_id, id);

CREATE TABLE tasks (
    id         text COLLATE "C" PRIMARY KEY,
    name       text NOT NULL,
    package_id text COLLATE "C" NOT NULL,
    created    bigint NOT NULL
);

-- Blobs: a header per ID naming a generation, whose chunks are stored
-- apart, so that a reader keeps its generation while the ID is deleted and
-- written again.
CREATE SEQUENCE blob_gen;
CREATE TABLE blobs (
    id         text COLLATE "C" PRIMARY KEY,
    gen        bigint NOT NULL UNIQUE,
    size       bigint NOT NULL CHECK (size >= 0),
    sha256     bytea NOT NULL,
    chunk_size integer NOT NULL CHECK (chunk_size > 0)
);
CREATE TABLE blob_chunks (
    gen  bigint NOT NULL,
    n    bigint NOT NULL,
    crc  integer NOT NULL, -- CRC-32C of data
    data bytea NOT NULL,
    PRIMARY KEY (gen, n)
);

CREATE TABLE sessions (
    transport text COLLATE "C" NOT NULL,
    id        text COLLATE "C" NOT NULL,
    value     bytea NOT NULL,
    PRIMARY KEY (transport, id)
);

-- Store settings: the seal key's check value (never the key).
CREATE TABLE meta (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

-- +goose Down
DROP TABLE meta, sessions, blob_chunks, blobs, tasks, packages, groups, devices, products, records, snapshots, events, streams;
DROP SEQUENCE blob_gen;
