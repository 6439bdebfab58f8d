package postgres

// migrations are the same schema versions as SQLite's
// (internal/ac/store/sqlite/migrations.go), in PostgreSQL's words: BIGINT
// for SQLite's 64-bit INTEGER (nanosecond times), BYTEA for BLOB, and
// triggers that also NOTIFY. An entry is never changed once landed.
var migrations = []string{
	// 1: the first schema. macs.rowid is SQLite's implicit insertion
	// order made explicit: a node's MACs are listed in the order they
	// were learnt.
	`CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
	CREATE TABLE nodes (
		id TEXT PRIMARY KEY,
		state TEXT NOT NULL,
		key BYTEA,
		hostname TEXT NOT NULL DEFAULT '',
		created_at BIGINT NOT NULL,
		updated_at BIGINT NOT NULL,
		first_addr TEXT NOT NULL DEFAULT '',
		last_unlock BIGINT NOT NULL DEFAULT 0,
		last_seen BIGINT NOT NULL DEFAULT 0,
		last_addr TEXT NOT NULL DEFAULT '',
		boot_id TEXT NOT NULL DEFAULT '',
		status TEXT NOT NULL DEFAULT '',
		events_acked BIGINT NOT NULL DEFAULT 0
	);
	CREATE TABLE macs (mac TEXT PRIMARY KEY, node_id TEXT NOT NULL REFERENCES nodes(id), rowid BIGSERIAL NOT NULL);
	CREATE INDEX macs_node ON macs(node_id);
	CREATE TABLE ssh_keys (key TEXT PRIMARY KEY, added_at BIGINT NOT NULL);
	CREATE TABLE config_files (path TEXT PRIMARY KEY, content BYTEA NOT NULL, updated_at BIGINT NOT NULL);
	CREATE TABLE jobs (
		id TEXT PRIMARY KEY,
		node_id TEXT NOT NULL REFERENCES nodes(id),
		kind TEXT NOT NULL,
		args TEXT NOT NULL DEFAULT '',
		timeout_ns BIGINT NOT NULL,
		state TEXT NOT NULL,
		result TEXT NOT NULL DEFAULT '',
		result_by TEXT NOT NULL DEFAULT '',
		created_at BIGINT NOT NULL,
		started_at BIGINT NOT NULL DEFAULT 0,
		finished_at BIGINT NOT NULL DEFAULT 0
	);
	CREATE INDEX jobs_node_state ON jobs(node_id, state, created_at);
	CREATE TABLE events (
		node_id TEXT NOT NULL REFERENCES nodes(id),
		seq BIGINT NOT NULL,
		time BIGINT NOT NULL,
		kind TEXT NOT NULL,
		data TEXT NOT NULL DEFAULT '',
		received_at BIGINT NOT NULL,
		PRIMARY KEY (node_id, seq)
	);`,
	// 2: long-polls ask which nodes have queued jobs.
	`CREATE INDEX jobs_state ON jobs(state, node_id);`,
	// 3: change counters, bumped by triggers whatever controller writes,
	// and a NOTIFY on g8_changes so every controller's watch wakes at once.
	`CREATE TABLE changes (what TEXT PRIMARY KEY, n BIGINT NOT NULL);
	INSERT INTO changes(what, n) VALUES ('nodes', 0), ('jobs', 0);
	CREATE FUNCTION g8_changed() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		UPDATE changes SET n = n + 1 WHERE what = TG_ARGV[0];
		PERFORM pg_notify('g8_changes', TG_ARGV[0]);
		RETURN NULL;
	END $$;
	CREATE TRIGGER nodes_state_changed AFTER UPDATE OF state ON nodes
		FOR EACH ROW EXECUTE FUNCTION g8_changed('nodes');
	CREATE TRIGGER nodes_deleted AFTER DELETE ON nodes
		FOR EACH ROW EXECUTE FUNCTION g8_changed('nodes');
	CREATE TRIGGER jobs_queued AFTER INSERT ON jobs
		FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION g8_changed('jobs');
	CREATE TRIGGER jobs_requeued AFTER UPDATE OF state ON jobs
		FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION g8_changed('jobs');`,
	// 4: recovery master keys, wrapped under a key-encryption key that is
	// a file, never in the database; which key each node last recovered
	// through, so rotation knows when an old key is no longer needed.
	`CREATE TABLE recovery_keys (kid TEXT PRIMARY KEY, wrapped BYTEA NOT NULL, created_at BIGINT NOT NULL);
	ALTER TABLE nodes ADD COLUMN recovery_kid TEXT NOT NULL DEFAULT '';`,
	// 5: the trust model (docs/api.md): each node's identity key and its
	// fingerprint (one node per key), the serials of the node certificates
	// it may use (cert_serial '' marks a node enrolled before this
	// migration, which any node-CA certificate of it serves until its first
	// new one; 'none' matches no certificate), and the MACs it reported
	// that no operator has bound. A change of serial wakes every
	// controller and drops its node cache like a change of state, so a
	// superseded certificate is refused everywhere at once.
	`ALTER TABLE nodes ADD COLUMN identity BYTEA;
	ALTER TABLE nodes ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';
	ALTER TABLE nodes ADD COLUMN cert_serial TEXT NOT NULL DEFAULT '';
	ALTER TABLE nodes ADD COLUMN cert_pending TEXT NOT NULL DEFAULT '';
	ALTER TABLE nodes ADD COLUMN cert_expiry BIGINT NOT NULL DEFAULT 0;
	CREATE UNIQUE INDEX nodes_fingerprint ON nodes(fingerprint) WHERE fingerprint <> '';
	CREATE TABLE reported_macs (
		node_id TEXT NOT NULL REFERENCES nodes(id),
		mac TEXT NOT NULL,
		first_seen BIGINT NOT NULL,
		last_seen BIGINT NOT NULL,
		last_addr TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (node_id, mac)
	);
	CREATE TRIGGER nodes_cert_changed AFTER UPDATE OF cert_serial, cert_pending ON nodes
		FOR EACH ROW EXECUTE FUNCTION g8_changed('nodes');`,
	// 6: the grid's rollout state per app (internal/grid.RolloutState as
	// JSON), versioned for compare-and-swap.
	`CREATE TABLE grid_rollouts (app TEXT PRIMARY KEY, state TEXT NOT NULL, version BIGINT NOT NULL);`,
	// 7: which nodes changed: each node's last state or certificate change
	// (or its deletion) as the value the nodes counter took then, so a
	// controller drops from its cache and wakes the polls of those nodes
	// only. The counter's row lock, held to commit, orders these values
	// as the commits: a watch that saw the counter at n misses no change
	// above n.
	`CREATE TABLE node_changes (id TEXT PRIMARY KEY, n BIGINT NOT NULL);
	CREATE INDEX node_changes_n ON node_changes(n);
	CREATE FUNCTION g8_node_changed() RETURNS trigger LANGUAGE plpgsql AS $$
	DECLARE
		v BIGINT;
		node TEXT;
	BEGIN
		IF TG_OP = 'DELETE' THEN
			node := OLD.id;
		ELSE
			node := NEW.id;
		END IF;
		UPDATE changes SET n = n + 1 WHERE what = 'nodes' RETURNING n INTO v;
		INSERT INTO node_changes(id, n) VALUES (node, v) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n;
		PERFORM pg_notify('g8_changes', 'nodes');
		RETURN NULL;
	END $$;
	DROP TRIGGER nodes_state_changed ON nodes;
	DROP TRIGGER nodes_deleted ON nodes;
	DROP TRIGGER nodes_cert_changed ON nodes;
	CREATE TRIGGER nodes_state_changed AFTER UPDATE OF state ON nodes
		FOR EACH ROW EXECUTE FUNCTION g8_node_changed();
	CREATE TRIGGER nodes_deleted AFTER DELETE ON nodes
		FOR EACH ROW EXECUTE FUNCTION g8_node_changed();
	CREATE TRIGGER nodes_cert_changed AFTER UPDATE OF cert_serial, cert_pending ON nodes
		FOR EACH ROW EXECUTE FUNCTION g8_node_changed();`,
	// 8: floods (issue 16): when a node was first approved (a pending
	// node that never was expires: g8-ac serve --pending-expiry), how many
	// events each node holds (its quota is checked without counting rows),
	// and an index for counting and expiring pending nodes.
	`ALTER TABLE nodes ADD COLUMN approved_at BIGINT NOT NULL DEFAULT 0;
	ALTER TABLE nodes ADD COLUMN events_stored BIGINT NOT NULL DEFAULT 0;
	UPDATE nodes SET approved_at = updated_at
		WHERE state IN ('approved', 'revoked') OR last_seen <> 0 OR key IS NOT NULL OR cert_serial <> 'none';
	UPDATE nodes SET events_stored = (SELECT count(*) FROM events WHERE events.node_id = nodes.id);
	CREATE INDEX nodes_state ON nodes(state, created_at);`,
}
